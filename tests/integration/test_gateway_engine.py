"""Watching a real execution run by the engine: the live stream equals the stored log, event for event."""

from __future__ import annotations

from tests.helpers import create_flow, events_of, start
from tests.integration.gateway_harness import client, serve

FLOW = """
name: watched-live
steps:
  - id: count
    type: code
    config:
      source: |
        def main(context):
            for i in range(10):
                context.log(f"tick {i}")
                context.progress(i + 1, 10)
            return {"n": 10}
  - id: done
    type: data_transform
    config: {expression: "steps['count'].output.n * 2"}
"""


async def test_a_flow_watched_from_before_it_starts_streams_exactly_its_events(services, org, api) -> None:
    flow_id = await create_flow(api, FLOW)
    async with serve(services) as address, client(address, org["key"]) as c:
        reply = await c.subscribe(f"workflows:{flow_id}")
        assert reply["type"] == "subscribed"
        execution_id = await start(api, flow_id)
        live = await c.events_until(lambda m: m["type"] == "execution.completed")
        async with client(address, org["key"]) as late:
            replay = await late.subscribe(f"executions:{execution_id}", since=0)
            replayed = await late.events(replay["data"]["replayed"])
    stored = await events_of(api, execution_id)
    assert [e["data"] for e in live] == stored
    assert [e["data"] for e in replayed] == stored
    assert replay["data"]["snapshot"]["status"] == "completed"
    assert {s["status"] for s in replay["data"]["snapshot"]["steps"]} == {"completed"}
    types = [e["type"] for e in live]
    assert types.count("log") == 10 and types.count("execution.progress") == 10
