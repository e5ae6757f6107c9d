"""Who am I, users, API keys, organizations (bootstrap admin) and organization secrets."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tolstoy.api import views
from tolstoy.api.deps import AdminDep, PrincipalDep, ServicesDep
from tolstoy.errors import Forbidden
from tolstoy.store import identity

router = APIRouter(prefix="/api/v1", tags=["identity"])
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


class UserIn(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    name: str = Field(min_length=1, max_length=200)
    role: str = Field(default="member", pattern="^(admin|member)$")


class KeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class OrganizationIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class SecretIn(BaseModel):
    value: str = Field(min_length=1, max_length=65536)


@router.get("/me")
async def me(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    org = await identity.get_org(services.db, principal.org_id)
    user = await identity.get_user(services.db, principal.org_id, principal.user_id)
    return {
        "user": views.user(user),
        "organization": {"id": org["id"], "name": org["name"]},
        "apiKeyId": principal.key_id,
        "role": principal.role,
    }


@router.get("/users")
async def list_users(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    return {
        "items": [views.user(u) for u in await identity.list_users(services.db, principal.org_id)],
        "nextCursor": None,
    }


@router.post("/users", status_code=201)
async def create_user(body: UserIn, principal: AdminDep, services: ServicesDep) -> dict[str, Any]:
    return views.user(
        await identity.create_user(services.db, principal.org_id, body.email, body.name, body.role)
    )


@router.get("/api-keys")
async def list_keys(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    return {
        "items": [views.api_key(k) for k in await identity.list_keys(services.db, principal.org_id)],
        "nextCursor": None,
    }


@router.post("/api-keys", status_code=201)
async def create_key(body: KeyIn, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    key, row = await identity.create_key(services.db, principal.org_id, principal.user_id, body.name)
    return {**views.api_key(row), "key": key}


@router.delete("/api-keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, principal: AdminDep, services: ServicesDep) -> None:
    await identity.revoke_key(services.db, principal.org_id, key_id)


@router.post("/organizations", status_code=201)
async def create_organization(
    body: OrganizationIn, principal: AdminDep, services: ServicesDep
) -> dict[str, Any]:
    if not principal.is_bootstrap:
        raise Forbidden("only the bootstrap admin may create organizations")
    org, key = await identity.create_organization(services.db, body.name)
    return {"id": org["id"], "name": org["name"], "apiKey": key}


@router.get("/secrets")
async def list_secrets(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    return {"items": await services.secrets.listing(principal.org_id), "nextCursor": None}


@router.put("/secrets/{name}", status_code=204)
async def put_secret(name: str, body: SecretIn, principal: AdminDep, services: ServicesDep) -> None:
    if not SECRET_NAME.match(name):
        from tolstoy.errors import FieldError, ValidationFailed

        raise ValidationFailed(
            "invalid secret name",
            details=[
                FieldError("name", "letters, digits and _ only, starting with a letter or _", "pattern")
            ],
        )
    await services.secrets.put(principal.org_id, name, body.value)


@router.delete("/secrets/{name}", status_code=204)
async def delete_secret(name: str, principal: AdminDep, services: ServicesDep) -> None:
    await services.secrets.delete(principal.org_id, name)
