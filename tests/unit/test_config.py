"""Settings from the environment: the gateway's liveness timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tolstoy.config import Settings
from tolstoy.errors import BadRequest


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"TOLSTOY_HOME": str(tmp_path), "TOLSTOY_SECRET_KEY": "k", **env})


def test_liveness_timings_default_to_the_documented_values(tmp_path: Path) -> None:
    s = settings(tmp_path, TOLSTOY_WS_PING_INTERVAL_S="")
    assert (s.ws_ping_interval_s, s.ws_idle_timeout_s, s.sse_heartbeat_s) == (25.0, 60.0, 15.0)


def test_liveness_timings_are_read_from_the_environment(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        TOLSTOY_WS_PING_INTERVAL_S="5",
        TOLSTOY_WS_IDLE_TIMEOUT_S="12.5",
        TOLSTOY_SSE_HEARTBEAT_S="0.25",
    )
    assert (s.ws_ping_interval_s, s.ws_idle_timeout_s, s.sse_heartbeat_s) == (5.0, 12.5, 0.25)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "TOLSTOY_SSE_HEARTBEAT_S must be a number of seconds, got 'soon'"),
        ("0", "TOLSTOY_SSE_HEARTBEAT_S must be a positive number of seconds, got '0'"),
        ("-1", "TOLSTOY_SSE_HEARTBEAT_S must be a positive number of seconds, got '-1'"),
        ("inf", "TOLSTOY_SSE_HEARTBEAT_S must be a positive number of seconds, got 'inf'"),
        ("nan", "TOLSTOY_SSE_HEARTBEAT_S must be a positive number of seconds, got 'nan'"),
    ],
)
def test_a_bad_timing_is_refused_with_its_name_and_value(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        settings(tmp_path, TOLSTOY_SSE_HEARTBEAT_S=value)
    assert str(caught.value) == message


@pytest.mark.parametrize("name", ["TOLSTOY_WS_PING_INTERVAL_S", "TOLSTOY_WS_IDLE_TIMEOUT_S"])
def test_every_timing_is_validated(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadRequest, match=name):
        settings(tmp_path, **{name: "x"})
