"""Flows: CRUD with immutable versions, execute, per-flow executions and metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response

from tolstoy.api import views
from tolstoy.api.deps import PrincipalDep, ServicesDep
from tolstoy.api.pagination import Limit
from tolstoy.engine.definition import parse_definition
from tolstoy.engine.service import validate_variables
from tolstoy.errors import BadRequest
from tolstoy.store import executions as exec_store
from tolstoy.store import flows as flow_store

router = APIRouter(prefix="/api/v1/flows", tags=["flows"])

_DEFINITION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


async def _definition(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("request body is empty: send a flow definition as JSON or YAML")
    defn = parse_definition(raw, content_type=request.headers.get("content-type"))
    result: dict[str, Any] = defn.model_dump(by_alias=True, exclude_none=True)
    return result


@router.get("")
async def list_flows(
    principal: PrincipalDep, services: ServicesDep, limit: Limit = 50, cursor: str | None = None
) -> dict[str, Any]:
    rows, next_cursor = await flow_store.list_page(services.db, principal.org_id, limit, cursor)
    return {"items": [views.flow(r) for r in rows], "nextCursor": next_cursor}


@router.post("", status_code=201, openapi_extra=_DEFINITION_BODY)
async def create_flow(request: Request, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    definition = await _definition(request)
    row = await flow_store.create(services.db, principal.org_id, definition)
    return views.flow(row, definition)


@router.get("/{flow_id}")
async def get_flow(flow_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    row = await flow_store.get(services.db, principal.org_id, flow_id)
    return views.flow(row, await flow_store.definition(services.db, flow_id, row["current_version"]))


@router.put("/{flow_id}", openapi_extra=_DEFINITION_BODY)
async def update_flow(
    flow_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    await flow_store.get(services.db, principal.org_id, flow_id)
    definition = await _definition(request)
    return views.flow(
        await flow_store.new_version(services.db, principal.org_id, flow_id, definition), definition
    )


@router.delete("/{flow_id}", status_code=204)
async def delete_flow(flow_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    await flow_store.delete(services.db, principal.org_id, flow_id)
    return Response(status_code=204)


@router.get("/{flow_id}/versions")
async def list_versions(flow_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    rows = await flow_store.versions(services.db, principal.org_id, flow_id)
    items = [
        {"version": r["version"], "createdAt": views.iso(r["created_at"]), "definition": r["definition"]}
        for r in rows
    ]
    return {"items": items, "nextCursor": None}


@router.post("/{flow_id}/execute", status_code=202)
async def execute_flow(
    flow_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    response: Response,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> dict[str, Any]:
    body = body or {}
    variables = validate_variables(body.get("variables"))
    key = body.get("idempotencyKey")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise BadRequest("idempotencyKey must be a string of 1 to 200 characters")
    flow = await flow_store.get(services.db, principal.org_id, flow_id)
    secrets = await services.secrets.values(principal.org_id)
    row, created = await services.executions.start(
        principal.org_id, flow, variables, idempotency_key=key, created_by=principal.user_id, secrets=secrets
    )
    if not created:
        response.status_code = 200
    return {"executionId": row["id"], "status": row["status"], "created": created}


@router.get("/{flow_id}/executions")
async def flow_executions(
    flow_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    limit: Limit = 50,
    cursor: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    await flow_store.get(services.db, principal.org_id, flow_id)
    flt = exec_store.ExecutionFilter(status=_split(status), flow_id=flow_id)
    rows, next_cursor = await exec_store.list_page(services.db, principal.org_id, flt, limit, cursor)
    return {"items": [views.execution(r) for r in rows], "nextCursor": next_cursor}


@router.get("/{flow_id}/metrics")
async def flow_metrics(flow_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    await flow_store.get(services.db, principal.org_id, flow_id)
    breakdown = await exec_store.counts_by_status(services.db, principal.org_id, flow_id)
    durations = sorted(await exec_store.durations(services.db, principal.org_id, flow_id))
    finished = breakdown.get("completed", 0) + breakdown.get("failed", 0)
    return {
        "totalExecutions": sum(breakdown.values()),
        "statusBreakdown": breakdown,
        "successRate": round(breakdown.get("completed", 0) / finished, 4) if finished else None,
        "durationP50": _pct(durations, 0.50),
        "durationP95": _pct(durations, 0.95),
    }


def _pct(values: list[int], q: float) -> int | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def _split(values: list[str] | None) -> list[str]:
    return [v for raw in values or () for v in raw.split(",") if v]
