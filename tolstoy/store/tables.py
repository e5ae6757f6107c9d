"""Every table, defined once. Times are epoch milliseconds (BigInteger) on both backends."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# An autoincrementing 64-bit key that SQLite also accepts as its rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(320), nullable=False),
    Column("name", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("is_bootstrap", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("org_id", "email"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("prefix", String(20), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger),
    Column("revoked_at", BigInteger),
)

secrets = Table(
    "secrets",
    metadata,
    Column("org_id", String(40), ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("ciphertext", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

flows = Table(
    "flows",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("description", Text),
    Column("current_version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger),
    Index(None, "org_id", "name"),
)

flow_versions = Table(
    "flow_versions",
    metadata,
    Column("flow_id", String(40), ForeignKey("flows.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("definition", JSON, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

executions = Table(
    "executions",
    metadata,
    Column("id", String(48), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("flow_id", String(40), ForeignKey("flows.id", ondelete="CASCADE"), nullable=False),
    Column("flow_version", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("variables", JSON, nullable=False),
    Column("output", JSON),
    Column("error", JSON),
    Column("total_steps", Integer, nullable=False),
    Column("completed_steps", Integer, nullable=False, default=0),
    Column("failed_steps", Integer, nullable=False, default=0),
    Column("skipped_steps", Integer, nullable=False, default=0),
    Column("progress", JSON),
    Column("current_step", String(64)),
    Column("last_seq", Integer, nullable=False, default=0),
    # The queue and its lease (ARCHITECTURE.md guarantee 3).
    Column("run_after", BigInteger, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_epoch", Integer, nullable=False, default=0),
    Column("lease_expires_at", BigInteger),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("pause_requested", Boolean, nullable=False, default=False),
    Column("wait_reason", String(20)),
    Column("concurrency_limit", Integer),
    Column("retry_of", String(48)),
    Column("from_failed_step", Boolean, nullable=False, default=False),
    Column("idempotency_key", String(200)),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Column("created_by", String(40)),
    UniqueConstraint("org_id", "idempotency_key"),
    Index(None, "status", "run_after"),
    Index(None, "org_id", "created_at"),
    Index(None, "flow_id", "status"),
    Index(None, "lease_expires_at"),
)

step_runs = Table(
    "step_runs",
    metadata,
    Column("execution_id", String(48), ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True),
    Column("step_id", String(64), primary_key=True),
    Column("step_type", String(40), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("output", JSON),
    Column("error", JSON),
    Column("reason", Text),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Column("duration_ms", Integer),
    Column("next_attempt_at", BigInteger),
)

events = Table(
    "events",
    metadata,
    Column("gid", BigId, primary_key=True, autoincrement=True),
    Column("execution_id", String(48), ForeignKey("executions.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("org_id", String(40), nullable=False),
    Column("flow_id", String(40), nullable=False),
    Column("type", String(40), nullable=False),
    Column("step_id", String(64)),
    Column("level", String(10)),
    Column("ts", BigInteger, nullable=False),
    # The event exactly as it goes on the wire (compact JSON): replay sends these bytes unchanged.
    Column("body", Text, nullable=False),
    UniqueConstraint("execution_id", "seq"),
    Index(None, "org_id", "gid"),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("execution_id", String(48), ForeignKey("executions.id", ondelete="CASCADE"), nullable=False),
    Column("step_id", String(64), nullable=False),
    Column("status", String(20), nullable=False),
    Column("prompt", Text),
    Column("approvers", JSON),
    Column("decided_by", String(40)),
    Column("comment", Text),
    Column("expires_at", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    Column("decided_at", BigInteger),
    UniqueConstraint("execution_id", "step_id"),
    Index(None, "org_id", "status"),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    # The one-time login token that opened the session: unique, so a token can open one session only.
    Column("login_jti", String(64), nullable=False, unique=True),
    Column("org_id", String(40), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    Index(None, "expires_at"),
)
