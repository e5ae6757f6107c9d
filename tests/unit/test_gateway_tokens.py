"""Subscribe tokens: HS256 JWTs scoped to an organization and channel patterns."""

from __future__ import annotations

import time

import jwt

from tolstoy.crypto import signing_key
from tolstoy.gateway import tokens

SECRET = "unit-test-secret"


def test_a_minted_token_verifies_with_its_scope() -> None:
    token, expires_at = tokens.mint(SECRET, "org_a", ["executions:*"], 60, key_id="key_1")
    claims = tokens.verify(SECRET, token)
    assert claims is not None
    assert (claims.org_id, claims.channels, claims.key_id) == ("org_a", ("executions:*",), "key_1")
    assert abs(expires_at - (time.time() + 60)) < 2 and claims.expires_at == expires_at
    assert tokens.looks_like_jwt(token) and not tokens.looks_like_jwt("tsk_abc")


def test_expired_tampered_foreign_and_other_audience_tokens_are_refused() -> None:
    expired, _ = tokens.mint(SECRET, "org_a", ["executions"], -5)
    assert tokens.verify(SECRET, expired) is None
    good, _ = tokens.mint(SECRET, "org_a", ["executions"], 60)
    assert tokens.verify("another-secret", good) is None
    head, payload, sig = good.split(".")
    assert tokens.verify(SECRET, f"{head}.{payload}x.{sig}") is None
    login = jwt.encode(
        {"aud": "tolstoy:login", "org": "org_a", "ch": ["*"], "exp": time.time() + 60},
        signing_key(SECRET),
        algorithm="HS256",
    )
    assert tokens.verify(SECRET, login) is None
    unsigned = jwt.encode(
        {"aud": tokens.AUDIENCE, "org": "org_a", "ch": ["*"], "exp": time.time() + 60}, None, algorithm="none"
    )
    assert tokens.verify(SECRET, unsigned) is None
