"""Every Prometheus metric, defined once. Labels never carry an organization id (tenant isolation)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)

# -- engine --------------------------------------------------------------------------------
EXECUTIONS_FINISHED = Counter(
    "tolstoy_executions_finished_total",
    "Executions that reached a terminal state.",
    ["status"],
    registry=REGISTRY,
)
STEPS_FINISHED = Counter(
    "tolstoy_steps_finished_total", "Step attempts that ended.", ["type", "status"], registry=REGISTRY
)
STEP_DURATION_MS = Histogram(
    "tolstoy_step_duration_ms", "Duration of step attempts.", ["type"], buckets=_MS_BUCKETS, registry=REGISTRY
)
EXECUTIONS_RUNNING = Gauge(
    "tolstoy_executions_running", "Executions held by workers in this process.", registry=REGISTRY
)
JOURNAL_BATCH_SIZE = Histogram(
    "tolstoy_journal_batch_writes",
    "Writes committed per journal transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
LEASES_LOST = Counter(
    "tolstoy_leases_lost_total", "Executions whose lease this process lost.", registry=REGISTRY
)
RECONCILED = Counter(
    "tolstoy_reconciled_total",
    "Executions the reconciler reclaimed after their lease expired.",
    registry=REGISTRY,
)

# -- bus -----------------------------------------------------------------------------------
BUS_PUBLISHED = Counter(
    "tolstoy_bus_published_total",
    "Committed events handed to the bus (counted once, by the journal).",
    registry=REGISTRY,
)
BUS_RECONNECTS = Counter("tolstoy_bus_reconnects_total", "Bus connections re-established.", registry=REGISTRY)
BUS_PUBLISH_ERRORS = Counter(
    "tolstoy_bus_publish_errors_total",
    "Bus messages (committed batches) whose publishing failed or that were dropped; each counted once.",
    registry=REGISTRY,
)

# -- gateway -------------------------------------------------------------------------------
WS_CONNECTIONS = Gauge("tolstoy_ws_connections", "Open WebSocket connections.", registry=REGISTRY)
SSE_CONNECTIONS = Gauge("tolstoy_sse_connections", "Open SSE streams.", registry=REGISTRY)
SUBSCRIPTIONS = Gauge("tolstoy_subscriptions", "Active subscriptions (WebSocket and SSE).", registry=REGISTRY)
MESSAGES_OUT = Counter(
    "tolstoy_messages_out_total",
    "Event deliveries sent to clients, by transport (ws or sse).",
    ["transport"],
    registry=REGISTRY,
)
CONFLATED = Counter(
    "tolstoy_conflated_total", "Pending log/progress events replaced by a newer one.", registry=REGISTRY
)
SLOW_CONSUMER_CLOSES = Counter(
    "tolstoy_slow_consumer_closes_total", "Connections closed with 4008 slow_consumer.", registry=REGISTRY
)
BACKFILLS = Counter(
    "tolstoy_backfills_total", "Gaps and lost last events filled from the store.", registry=REGISTRY
)
