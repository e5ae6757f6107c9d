"""The Redis bus's message format, URL options and backoff."""

from __future__ import annotations

import pytest

from tolstoy.events.bus.redis import RedisBus, backoff_delay, decode_batch, encode_batch
from tolstoy.events.channels import org_channel, org_of_channel
from tolstoy.events.types import encode_event


def test_a_batch_round_trips_with_bodies_unchanged() -> None:
    events = [
        encode_event(
            execution_id="exec_1", org_id="org_a", flow_id="f", seq=s, type="log", ts=5, fields=fields
        )
        for s, fields in enumerate(
            [{"level": "warn", "message": "line\nbreak \u2603"}, {"status": "running"}], 1
        )
    ]
    assert decode_batch(encode_batch(events)) == events


@pytest.mark.parametrize(
    "payload", [b"", b"[1,[]]\nextra", b'[2,[["e","o","f",1,"log",0,null,null,null]]]\n{}', b"x"]
)
def test_malformed_messages_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_batch(payload)


def test_channel_names_are_per_organization_and_prefixed() -> None:
    assert org_channel("t1", "org_a") == "t1tolstoy:org:org_a"
    assert org_of_channel("t1", "t1tolstoy:org:org_a") == "org_a"
    assert org_of_channel("t1", "t2tolstoy:org:org_a") is None


def test_bus_url_options_are_taken_out_of_the_redis_url() -> None:
    bus = RedisBus("redis://h:1/0?prefix=abc&health_interval=0.5&health_timeout=2&ssl_cert_reqs=none")
    assert (bus.prefix, bus.health_interval_s, bus.health_timeout_s) == ("abc", 0.5, 2.0)
    assert bus.url == "redis://h:1/0?ssl_cert_reqs=none"


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    assert 0.025 <= backoff_delay(0) <= 0.05
    assert all(1.0 <= backoff_delay(30) <= 2.0 for _ in range(50))
    assert len({backoff_delay(3) for _ in range(20)}) > 1
