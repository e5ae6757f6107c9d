"""Approvals of ``approval`` steps: list, grant, deny."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from tolstoy.api import views
from tolstoy.api.deps import PrincipalDep, ServicesDep
from tolstoy.api.pagination import Limit
from tolstoy.store import approvals as approval_store
from tolstoy.store import identity

router = APIRouter(prefix="/api/v1/approvals", tags=["approvals"])


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str | None = Field(default=None, max_length=4000)


@router.get("")
async def list_approvals(
    principal: PrincipalDep,
    services: ServicesDep,
    status: Annotated[str | None, Query(pattern="^(pending|granted|denied|expired|cancelled)$")] = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    rows, next_cursor = await approval_store.list_page(services.db, principal.org_id, status, limit, cursor)
    return {"items": [views.approval(r) for r in rows], "nextCursor": next_cursor}


async def _decide(
    approval_id: str, granted: bool, body: DecisionIn | None, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    user = await identity.get_user(services.db, principal.org_id, principal.user_id)
    row = await services.executions.decide_approval(
        principal.org_id,
        approval_id,
        granted=granted,
        by=principal.user_id,
        by_email=user["email"],
        comment=body.comment if body else None,
    )
    return views.approval(row)


@router.post("/{approval_id}/grant")
async def grant(
    approval_id: str, principal: PrincipalDep, services: ServicesDep, body: DecisionIn | None = None
) -> dict[str, Any]:
    return await _decide(approval_id, True, body, principal, services)


@router.post("/{approval_id}/deny")
async def deny(
    approval_id: str, principal: PrincipalDep, services: ServicesDep, body: DecisionIn | None = None
) -> dict[str, Any]:
    return await _decide(approval_id, False, body, principal, services)
