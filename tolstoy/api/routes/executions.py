"""Executions: list, live status, steps, events, logs and control."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from tolstoy.api import views
from tolstoy.api.deps import PrincipalDep, ServicesDep
from tolstoy.api.pagination import Limit
from tolstoy.errors import BadRequest
from tolstoy.masking import Masker
from tolstoy.store import executions as exec_store
from tolstoy.timeutil import parse_iso

router = APIRouter(prefix="/api/v1/executions", tags=["executions"])
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for raw in values or () for v in raw.split(",") if v.strip()]


def _time(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        return parse_iso(value)
    except ValueError:
        raise BadRequest(
            f"{name} must be an ISO-8601 timestamp or epoch milliseconds, got {value!r}"
        ) from None


async def _masker(services: ServicesDep, org_id: str) -> Masker:
    return Masker((await services.secrets.values(org_id)).values())


@router.get("")
async def list_executions(
    principal: PrincipalDep,
    services: ServicesDep,
    limit: Limit = 50,
    cursor: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    flowId: str | None = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
) -> dict[str, Any]:
    flt = exec_store.ExecutionFilter(
        status=_split(status), flow_id=flowId, created_from=_time(from_, "from"), created_to=_time(to, "to")
    )
    rows, next_cursor = await exec_store.list_page(services.db, principal.org_id, flt, limit, cursor)
    masker = await _masker(services, principal.org_id)
    return {"items": [views.execution(r, masker) for r in rows], "nextCursor": next_cursor}


@router.get("/{execution_id}")
async def get_execution(execution_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    row = await exec_store.get(services.db, principal.org_id, execution_id)
    masker = await _masker(services, principal.org_id)
    out = views.execution(row, masker)
    out.update(await exec_store.issue_counts(services.db, execution_id))
    out["retrying"] = views.retrying(await exec_store.load_step_rows(services.db, execution_id), masker)
    return out


@router.get("/{execution_id}/steps")
async def get_steps(execution_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    row = await exec_store.get(services.db, principal.org_id, execution_id)
    masker = await _masker(services, principal.org_id)
    rows = {r["step_id"]: r for r in await exec_store.load_step_rows(services.db, execution_id)}
    from tolstoy.store import flows as flow_store

    definition = await flow_store.definition(services.db, row["flow_id"], row["flow_version"])
    items = []
    for step in definition["steps"]:
        found = rows.get(step["id"])
        item = (
            views.step(found, masker)
            if found
            else {"stepId": step["id"], "type": step["type"], "status": "pending", "attempt": 0}
        )
        item["name"] = step.get("name") or step["id"]
        items.append(item)
    return {"items": items}


@router.get("/{execution_id}/events")
async def get_events(
    execution_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    since: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    types: Annotated[list[str] | None, Query()] = None,
) -> Response:
    await exec_store.get(services.db, principal.org_id, execution_id)
    bodies = await exec_store.event_bodies(
        services.db, execution_id, since=since, limit=limit + 1, types=_split(types)
    )
    more = len(bodies) > limit
    bodies = bodies[:limit]
    # The stored bodies are already the wire JSON: splice them, no re-encoding.
    items = ",".join(body for _, body in bodies)
    next_since = bodies[-1][0] if more and bodies else None
    payload = f'{{"items":[{items}],"nextSince":{next_since if next_since is not None else "null"}}}'
    return Response(payload, media_type="application/json")


@router.get("/{execution_id}/logs")
async def get_logs(
    execution_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    levels: Annotated[list[str] | None, Query()] = None,
    since: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> Response:
    wanted = _split(levels)
    unknown = [lv for lv in wanted if lv not in LOG_LEVELS]
    if unknown:
        raise BadRequest(f"unknown log level(s) {', '.join(unknown)}; known: {', '.join(LOG_LEVELS)}")
    await exec_store.get(services.db, principal.org_id, execution_id)
    bodies = await exec_store.log_bodies(services.db, execution_id, levels=wanted, since=since, limit=limit)
    return Response('{"items":[' + ",".join(bodies) + "]}", media_type="application/json")


@router.post("/{execution_id}/cancel")
async def cancel(execution_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    row = await services.executions.cancel(principal.org_id, execution_id, by=principal.user_id)
    return views.execution(row, await _masker(services, principal.org_id))


@router.post("/{execution_id}/pause")
async def pause(execution_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    row = await services.executions.pause(principal.org_id, execution_id, by=principal.user_id)
    return views.execution(row, await _masker(services, principal.org_id))


@router.post("/{execution_id}/resume")
async def resume(execution_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    row = await services.executions.resume(principal.org_id, execution_id, by=principal.user_id)
    return views.execution(row, await _masker(services, principal.org_id))


class RetryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fromFailedStep: bool = False


@router.post("/{execution_id}/retry", status_code=202)
async def retry(
    execution_id: str, principal: PrincipalDep, services: ServicesDep, body: RetryIn | None = None
) -> dict[str, Any]:
    secrets = await services.secrets.values(principal.org_id)
    row = await services.executions.retry(
        principal.org_id,
        execution_id,
        principal.user_id,
        from_failed_step=bool(body and body.fromFailedStep),
        secrets=secrets,
    )
    return {"executionId": row["id"], "status": row["status"], "retryOf": execution_id}
