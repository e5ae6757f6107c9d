import random

import pytest
from pydantic import ValidationError

from tolstoy.engine.retry import RetryPolicy, delay_ms, effective_policy, should_retry


def policy(**fields: object) -> RetryPolicy:
    return RetryPolicy.model_validate(fields)


def test_defaults_mean_no_retry() -> None:
    p = RetryPolicy()
    assert (p.max_attempts, p.backoff, p.base_delay_ms, p.max_delay_ms, p.jitter) == (
        1,
        "exponential",
        1000,
        60_000,
        0.2,
    )
    assert not should_retry(p, 1, retryable=True)


def test_camel_case_round_trip() -> None:
    p = policy(maxAttempts=3, baseDelayMs=10, backoff="fixed")
    assert p.max_attempts == 3 and p.base_delay_ms == 10
    dumped = p.model_dump(by_alias=True)
    assert dumped["maxAttempts"] == 3 and "max_attempts" not in dumped
    assert RetryPolicy.model_validate(dumped) == p


@pytest.mark.parametrize(
    "fields",
    [
        {"maxAttempts": 0},
        {"maxAttempts": 101},
        {"baseDelayMs": -1},
        {"backoff": "linear"},
        {"jitter": 1.5},
        {"baseDelayMs": 5000, "maxDelayMs": 100},
        {"retries": 3},
    ],
)
def test_bad_settings_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        policy(**fields)


def test_max_below_base_names_both_values() -> None:
    with pytest.raises(ValidationError) as info:
        policy(baseDelayMs=5000, maxDelayMs=100)
    assert "maxDelayMs (100) must be >= baseDelayMs (5000)" in str(info.value)


def test_exponential_growth_without_jitter() -> None:
    p = policy(baseDelayMs=100, maxDelayMs=100_000, jitter=0)
    assert [delay_ms(p, n) for n in range(1, 6)] == [100, 200, 400, 800, 1600]


def test_exponential_is_capped() -> None:
    p = policy(baseDelayMs=1000, maxDelayMs=5000, jitter=0)
    assert [delay_ms(p, n) for n in (3, 4, 5, 1000)] == [4000, 5000, 5000, 5000]


def test_fixed_backoff_stays_at_base() -> None:
    p = policy(backoff="fixed", baseDelayMs=250, jitter=0)
    assert {delay_ms(p, n) for n in range(1, 10)} == {250}


def test_jitter_stays_within_bounds_and_varies() -> None:
    p = policy(baseDelayMs=1000, maxDelayMs=60_000, jitter=0.5)
    rng = random.Random(42)
    delays = [delay_ms(p, 1, rng=rng) for _ in range(500)]
    assert all(500 <= d <= 1500 for d in delays)
    assert len(set(delays)) > 50
    assert min(delays) < 700 and max(delays) > 1300


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    p = policy(baseDelayMs=1000, jitter=0.3)
    first = [delay_ms(p, n, rng=random.Random(7)) for n in range(1, 5)]
    second = [delay_ms(p, n, rng=random.Random(7)) for n in range(1, 5)]
    assert first == second


def test_jitter_never_exceeds_the_cap() -> None:
    p = policy(baseDelayMs=1000, maxDelayMs=1000, jitter=1.0)
    rng = random.Random(1)
    delays = [delay_ms(p, 3, rng=rng) for _ in range(200)]
    assert max(delays) == 1000
    assert min(delays) >= 0


def test_zero_base_never_negative() -> None:
    assert delay_ms(policy(baseDelayMs=0, jitter=1.0), 5, rng=random.Random(3)) == 0


def test_attempt_must_start_at_one() -> None:
    with pytest.raises(ValueError):
        delay_ms(RetryPolicy(), 0)


def test_should_retry() -> None:
    p = policy(maxAttempts=3)
    assert should_retry(p, 1, retryable=True)
    assert should_retry(p, 2, retryable=True)
    assert not should_retry(p, 3, retryable=True)
    assert not should_retry(p, 1, retryable=False)


def test_effective_policy_without_any_is_the_default() -> None:
    assert effective_policy(None, None) == RetryPolicy()
    assert effective_policy(None, None).max_attempts == 1


def test_effective_policy_falls_back_to_either_side() -> None:
    flow = policy(maxAttempts=4)
    step = policy(maxAttempts=2)
    assert effective_policy(None, flow) is flow
    assert effective_policy(step, None) is step


def test_step_overrides_only_what_it_set() -> None:
    flow = policy(maxAttempts=5, backoff="fixed", baseDelayMs=200, jitter=0)
    step = policy(baseDelayMs=50)
    merged = effective_policy(step, flow)
    assert merged.base_delay_ms == 50
    assert (merged.max_attempts, merged.backoff, merged.jitter) == (5, "fixed", 0)


def test_step_explicitly_setting_a_default_still_overrides() -> None:
    flow = policy(maxAttempts=5)
    merged = effective_policy(policy(maxAttempts=1), flow)
    assert merged.max_attempts == 1


def test_merged_base_above_flow_cap_is_capped_by_delay() -> None:
    flow = policy(maxDelayMs=2000, baseDelayMs=100, jitter=0)
    merged = effective_policy(policy(baseDelayMs=1000, backoff="fixed"), flow)
    assert merged.base_delay_ms == 1000
    assert delay_ms(merged, 1) == 1000
    merged = effective_policy(policy(baseDelayMs=5000), flow)
    assert delay_ms(merged, 1) == 2000
