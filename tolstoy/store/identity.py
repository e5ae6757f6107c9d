"""Organizations, users, API keys and organization secrets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tolstoy import crypto, ids
from tolstoy.errors import Conflict, NotFound
from tolstoy.store.db import Database
from tolstoy.store.tables import api_keys, organizations, secrets, users
from tolstoy.timeutil import now_ms


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's user in the key's organization."""

    org_id: str
    user_id: str
    key_id: str
    role: str
    is_bootstrap: bool


async def is_empty(db: Database) -> bool:
    async with db.read() as conn:
        return (await conn.execute(select(func.count()).select_from(organizations))).scalar() == 0


async def create_organization(
    db: Database, name: str, *, admin_email: str = "admin@localhost", bootstrap: bool = False
) -> tuple[dict[str, Any], str]:
    """An organization with an admin user and a first API key; returns (org, plaintext key)."""
    now = now_ms()
    org = {"id": ids.new_id("org"), "name": name, "created_at": now}
    user = {
        "id": ids.new_id("usr"),
        "org_id": org["id"],
        "email": admin_email,
        "name": "Admin",
        "role": "admin",
        "is_bootstrap": bootstrap,
        "created_at": now,
    }
    async with db.write() as conn:
        await conn.execute(insert(organizations).values(**org))
        await conn.execute(insert(users).values(**user))
        key, _ = await _insert_key(
            conn, str(org["id"]), str(user["id"]), "bootstrap" if bootstrap else "admin"
        )
    return org, key


async def _insert_key(conn: Any, org_id: str, user_id: str, name: str) -> tuple[str, dict[str, Any]]:
    key = crypto.new_api_key()
    row = {
        "id": ids.new_id("key"),
        "org_id": org_id,
        "user_id": user_id,
        "name": name,
        "prefix": crypto.key_prefix(key),
        "key_hash": crypto.hash_api_key(key),
        "created_at": now_ms(),
    }
    await conn.execute(insert(api_keys).values(**row))
    return key, row


async def authenticate(db: Database, key: str) -> Principal | None:
    stmt = (
        select(api_keys.c.id, api_keys.c.org_id, api_keys.c.user_id, users.c.role, users.c.is_bootstrap)
        .join(users, users.c.id == api_keys.c.user_id)
        .where(api_keys.c.key_hash == crypto.hash_api_key(key), api_keys.c.revoked_at.is_(None))
    )
    async with db.read() as conn:
        row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    return Principal(row.org_id, row.user_id, row.id, row.role, bool(row.is_bootstrap))


async def get_org(db: Database, org_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        row = (await conn.execute(select(organizations).where(organizations.c.id == org_id))).first()
    if row is None:
        raise NotFound(f"organization {org_id!r} not found")
    return dict(row._mapping)


async def get_user(db: Database, org_id: str, user_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        stmt = select(users).where(users.c.org_id == org_id, users.c.id == user_id)
        row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"user {user_id!r} not found")
    return dict(row._mapping)


async def create_user(db: Database, org_id: str, email: str, name: str, role: str) -> dict[str, Any]:
    row = {
        "id": ids.new_id("usr"),
        "org_id": org_id,
        "email": email,
        "name": name,
        "role": role,
        "is_bootstrap": False,
        "created_at": now_ms(),
    }
    async with db.write() as conn:
        taken = await conn.execute(select(users.c.id).where(users.c.org_id == org_id, users.c.email == email))
        if taken.first() is not None:
            raise Conflict(f"a user with email {email!r} exists already")
        await conn.execute(insert(users).values(**row))
    return row


async def list_users(db: Database, org_id: str) -> list[dict[str, Any]]:
    async with db.read() as conn:
        stmt = select(users).where(users.c.org_id == org_id).order_by(users.c.created_at)
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def create_key(db: Database, org_id: str, user_id: str, name: str) -> tuple[str, dict[str, Any]]:
    async with db.write() as conn:
        return await _insert_key(conn, org_id, user_id, name)


async def list_keys(db: Database, org_id: str) -> list[dict[str, Any]]:
    async with db.read() as conn:
        stmt = select(api_keys).where(api_keys.c.org_id == org_id, api_keys.c.revoked_at.is_(None))
        return [dict(r._mapping) for r in await conn.execute(stmt.order_by(api_keys.c.created_at))]


async def revoke_key(db: Database, org_id: str, key_id: str) -> None:
    async with db.write() as conn:
        stmt = (
            update(api_keys)
            .where(api_keys.c.org_id == org_id, api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now_ms())
        )
        if (await conn.execute(stmt)).rowcount == 0:
            raise NotFound(f"api key {key_id!r} not found")


class SecretStore:
    """Organization secrets, encrypted at rest; plaintext only for the engine's templates."""

    def __init__(self, db: Database, cipher: crypto.Cipher) -> None:
        self.db, self.cipher = db, cipher

    async def put(self, org_id: str, name: str, value: str) -> None:
        now = now_ms()
        row = {
            "org_id": org_id,
            "name": name,
            "ciphertext": self.cipher.encrypt(value),
            "created_at": now,
            "updated_at": now,
        }
        async with self.db.write() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(secrets).values(**row)
            stmt = stmt.on_conflict_do_update(
                index_elements=["org_id", "name"],
                set_={"ciphertext": stmt.excluded.ciphertext, "updated_at": stmt.excluded.updated_at},
            )
            await conn.execute(stmt)

    async def delete(self, org_id: str, name: str) -> None:
        async with self.db.write() as conn:
            stmt = delete(secrets).where(secrets.c.org_id == org_id, secrets.c.name == name)
            if (await conn.execute(stmt)).rowcount == 0:
                raise NotFound(f"secret {name!r} not found")

    async def listing(self, org_id: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            stmt = select(secrets).where(secrets.c.org_id == org_id).order_by(secrets.c.name)
            rows = [dict(r._mapping) for r in await conn.execute(stmt)]
        return [
            {
                "name": r["name"],
                "value": _mask(self.cipher.decrypt(r["ciphertext"])),
                "createdAt": r["created_at"],
                "updatedAt": r["updated_at"],
            }
            for r in rows
        ]

    async def values(self, org_id: str) -> dict[str, str]:
        async with self.db.read() as conn:
            rows = await conn.execute(_VALUES, {"org_id": org_id})
            return {r.name: self.cipher.decrypt(r.ciphertext) for r in rows}


_VALUES = select(secrets.c.name, secrets.c.ciphertext).where(secrets.c.org_id == bindparam("org_id"))
"""Built once: every execute request and every claim reads an organization's secrets."""


def _mask(value: str) -> str:
    """Show only that a value exists (and its last 4 characters when it is long enough not to matter)."""
    return "****" if len(value) < 16 else "****" + value[-4:]
