"""Helpers for tests that run flows: create, start, wait for the end, check the event log."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tolstoy.events.types import TERMINAL_EVENTS

TERMINAL_STATUSES = {"completed", "failed", "cancelled"}


async def create_flow(api: httpx.AsyncClient, definition: str | dict[str, Any]) -> str:
    if isinstance(definition, str):
        resp = await api.post(
            "/api/v1/flows", content=definition, headers={"content-type": "application/yaml"}
        )
    else:
        resp = await api.post("/api/v1/flows", json=definition)
    assert resp.status_code == 201, resp.text
    flow_id: str = resp.json()["id"]
    return flow_id


async def start(api: httpx.AsyncClient, flow_id: str, **body: Any) -> str:
    resp = await api.post(f"/api/v1/flows/{flow_id}/execute", json=body)
    assert resp.status_code == 202, resp.text
    execution_id: str = resp.json()["executionId"]
    return execution_id


async def run_flow(
    api: httpx.AsyncClient, definition: str | dict[str, Any], timeout: float = 20.0, **body: Any
) -> dict[str, Any]:
    """Create, start and wait for the end; returns the execution detail."""
    execution_id = await start(api, await create_flow(api, definition), **body)
    return await wait_status(api, execution_id, TERMINAL_STATUSES, timeout)


async def wait_status(
    api: httpx.AsyncClient, execution_id: str, statuses: set[str] | str, timeout: float = 20.0
) -> dict[str, Any]:
    """Poll the execution until its status is one of ``statuses`` (fails after ``timeout``)."""
    wanted = {statuses} if isinstance(statuses, str) else statuses
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        detail: dict[str, Any] = (await api.get(f"/api/v1/executions/{execution_id}")).json()
        if detail.get("status") in wanted:
            return detail
        if loop.time() > deadline:
            raise AssertionError(f"execution {execution_id} is {detail.get('status')}, expected {wanted}")
        await asyncio.sleep(0.02)


async def events_of(api: httpx.AsyncClient, execution_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/api/v1/executions/{execution_id}/events", params={"limit": 5000})
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def assert_log_is_whole(events: list[dict[str, Any]]) -> None:
    """seq is 1..n with no gap or duplicate, exactly one terminal event, and it is last."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"seq not contiguous from 1: {seqs}"
    terminal = [e for e in events if e["type"] in TERMINAL_EVENTS]
    assert len(terminal) == 1, f"expected one terminal event, got {[e['type'] for e in terminal]}"
    assert events[-1] is terminal[0], "the terminal event must be the last one"


def types_of(events: list[dict[str, Any]], step_id: str | None = None) -> list[str]:
    return [e["type"] for e in events if step_id is None or e.get("stepId") == step_id]
