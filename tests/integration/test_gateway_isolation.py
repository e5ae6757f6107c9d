"""Tenant isolation: a credential of organization A never receives, replays or learns anything of B."""

from __future__ import annotations

import asyncio

import httpx

from tests.integration.gateway_harness import client, new_org, producer, serve


async def _token(api: httpx.AsyncClient, channels: list[str], ttl: int = 300) -> str:
    resp = await api.post("/api/v1/tokens/subscribe", json={"channels": channels, "ttlSeconds": ttl})
    assert resp.status_code == 201, resp.text
    token: str = resp.json()["token"]
    return token


async def test_nothing_of_another_organization_is_delivered_replayed_or_confirmed(services, org, api) -> None:
    other = await new_org(services)
    theirs = await producer(services, other["id"])
    await theirs.emit(2)
    mine = await producer(services, org["id"])
    token = await _token(api, ["*"])
    async with serve(services) as address:
        for credential in (org["key"], token):
            async with client(address, credential) as c:
                for channel in (f"executions:{theirs.execution_id}", f"workflows:{theirs.flow_id}"):
                    reply = await c.subscribe(channel, since=0)
                    assert reply["type"] == "error" and reply["data"]["code"] == "not_found", reply
                    assert other["id"] not in str(reply)
                reply = await c.subscribe(f"flows.{other['id']}.{theirs.execution_id}", since=0)
                assert reply["data"]["code"] == "forbidden"
                reply = await c.subscribe("executions", since=f"{theirs.execution_id}:1")
                assert reply["data"]["code"] == "not_found"
                filters = {
                    "executionIds": [theirs.execution_id, mine.execution_id],
                    "flowIds": [theirs.flow_id],
                }
                reply = await c.subscribe("executions", since=0, filters=filters)
                assert reply["type"] == "subscribed" and reply["data"]["replayed"] == 0
                all_of_mine = await c.subscribe("approvals", since=0)
                assert all_of_mine["data"]["replayed"] == 0
                reply = await c.subscribe(f"executions:{mine.execution_id}")
                assert reply["type"] == "subscribed"
                await theirs.emit(3)
                await theirs.finish()
                await mine.emit(1)
                delivered = await c.events(1)
                assert delivered[0]["data"]["orgId"] == org["id"]
                probe = await c.send("ping")
                assert (await c.recv())["id"] == probe, (
                    "nothing else (of the other organization) came in between"
                )


async def test_a_token_is_limited_to_its_channel_patterns(services, org, api) -> None:
    p = await producer(services, org["id"])
    q = await producer(services, org["id"])
    token = await _token(api, [f"executions:{p.execution_id}"])
    async with serve(services) as address, client(address, token, via="query") as c:
        assert (await c.subscribe(f"executions:{p.execution_id}", since=0))["type"] == "subscribed"
        assert (await c.subscribe(f"flows.{org['id']}.{p.execution_id}"))["type"] == "subscribed"
        for channel in (f"executions:{q.execution_id}", "executions", f"workflows:{p.flow_id}", "approvals"):
            reply = await c.subscribe(channel)
            assert reply["data"]["code"] == "forbidden", channel


async def test_token_minting_validates_channels_and_ttl(api, org) -> None:
    resp = await api.post("/api/v1/tokens/subscribe", json={"channels": ["executions:*"], "ttlSeconds": 60})
    body = resp.json()
    assert (
        resp.status_code == 201 and body["channels"] == ["executions:*"] and body["expiresAt"].endswith("Z")
    )
    bad = await api.post("/api/v1/tokens/subscribe", json={"channels": ["nope", "executions"]})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "channels[0]"
    other = await api.post("/api/v1/tokens/subscribe", json={"channels": ["flows.org_someone.*"]})
    assert other.status_code == 403
    for body in ({"channels": []}, {"channels": ["executions"], "ttlSeconds": 90_000}, {"ttlSeconds": 5}):
        assert (await api.post("/api/v1/tokens/subscribe", json=body)).status_code == 422
    anonymous = await api.post(
        "/api/v1/tokens/subscribe", json={"channels": ["executions"]}, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401
    token = (await api.post("/api/v1/tokens/subscribe", json={"channels": ["executions"]})).json()["token"]
    by_token = await api.post(
        "/api/v1/tokens/subscribe",
        json={"channels": ["executions"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert by_token.status_code == 401, "a subscribe token cannot mint tokens"


async def test_revoking_the_key_closes_its_connections_and_its_tokens(services, org, api) -> None:
    created = await api.post("/api/v1/api-keys", json={"name": "watcher"})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    minted = await api.post(
        "/api/v1/tokens/subscribe",
        json={"channels": ["executions"]},
        headers={"Authorization": f"Bearer {key}"},
    )
    token = minted.json()["token"]
    async with serve(services) as address, client(address, key) as by_key, client(address, token) as by_token:
        await by_key.subscribe("executions")
        await by_token.subscribe("executions")
        assert (await api.delete(f"/api/v1/api-keys/{key_id}")).status_code == 204
        for c in (by_key, by_token):
            await asyncio.wait_for(c.ws.wait_closed(), 5)
            assert c.ws.close_code == 4401


async def test_a_token_scoped_to_approvals_gets_approval_events_only_across_seq_skips_and_a_resync(
    services, org, api
) -> None:
    """Approval events skip ahead in ``seq``; that is no gap to fill with the log events between them."""
    token = await _token(api, ["approvals"])
    p = await producer(services, org["id"])

    async def approval(type_: str, approval_id: str) -> None:
        await p.emit(1, type_=type_, approvalId=approval_id, stepId="a")

    async with serve(services) as address, client(address, token) as c:
        assert (await c.subscribe("approvals"))["type"] == "subscribed"
        await p.emit(2)  # seq 2, 3: logs
        await approval("approval.required", "ap_1")  # 4
        await p.emit(3)  # 5..7
        await approval("approval.granted", "ap_1")  # 8
        got = await c.events(2)
        await services.gateway.routes[org["id"]].resync()  # as after a bus reconnect: replay from the store
        await p.emit(2, per_write=2)  # 9, 10
        await approval("approval.required", "ap_2")  # 11
        got += await c.events(1)
        probe = await c.send("ping")
        assert (await c.recv())["id"] == probe, "nothing else came"
    assert [(e["type"], e["data"]["seq"]) for e in got] == [
        ("approval.required", 4),
        ("approval.granted", 8),
        ("approval.required", 11),
    ]
    assert {e["channel"] for e in got} == {"approvals"}
