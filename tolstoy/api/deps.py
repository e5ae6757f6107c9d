"""Request dependencies: the process's services and the authenticated caller."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request

from tolstoy.api import sessions
from tolstoy.errors import Forbidden, Unauthorized
from tolstoy.services import Services
from tolstoy.store import identity
from tolstoy.store.identity import Principal


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def credential_from(headers: Mapping[str, str], query_token: str | None = None) -> str | None:
    """The API key or token a client presented: Bearer, X-API-Key, or ``?token=``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    return query_token


async def get_principal(request: Request, services: Annotated[Services, Depends(get_services)]) -> Principal:
    credential = credential_from(request.headers)
    if not credential:
        # The dashboard: its session cookie (same-origin check for changes), never an API key.
        principal = await sessions.cookie_principal(request, services)
        if principal is not None:
            return principal
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    principal = await identity.authenticate(services.db, credential)
    if principal is None:
        raise Unauthorized("invalid or revoked API key")
    return principal


async def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if principal.role != "admin":
        raise Forbidden("this needs an admin API key")
    return principal


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]
