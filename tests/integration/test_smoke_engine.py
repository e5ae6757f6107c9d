"""The engine end to end through the API, on both backends."""

from __future__ import annotations

from tests.helpers import assert_log_is_whole, events_of, run_flow, types_of

HELLO = """
name: hello
variables: {who: world}
steps:
  - id: greet
    type: data_transform
    config: {expression: "'hello ' ~ variables.who"}
  - id: shout
    type: data_transform
    config: {expression: "steps['greet'].output | upper"}
"""


async def test_hello_flow_completes_with_a_whole_event_log(api) -> None:
    detail = await run_flow(api, HELLO, variables={"who": "tolstoy"})
    assert detail["status"] == "completed"
    assert detail["output"] == {"shout": "HELLO TOLSTOY"}
    events = await events_of(api, detail["id"])
    assert_log_is_whole(events)
    assert types_of(events) == [
        "execution.queued",
        "execution.started",
        "step.started",
        "step.completed",
        "step.started",
        "step.completed",
        "execution.completed",
    ]
