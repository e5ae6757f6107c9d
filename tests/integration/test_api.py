"""REST behaviour and bad input: structured errors, never a 500, nothing lost; tenant isolation."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import assert_log_is_whole, create_flow, events_of, run_flow, start, wait_status

FLOW = """
name: api-flow
variables: {n: 1}
steps:
  - id: double
    type: data_transform
    config: {expression: "variables.n * 2"}
"""


def error(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert "Traceback" not in resp.text
    return body["error"]  # type: ignore[no-any-return]


async def test_malformed_yaml_is_a_400_naming_the_line(api) -> None:
    resp = await api.post(
        "/api/v1/flows",
        content="name: x\nsteps: [\n  - id: a\n",
        headers={"content-type": "application/yaml"},
    )
    assert resp.status_code == 400
    assert "line" in str(error(resp)["message"])


async def test_malformed_json_is_a_400(api) -> None:
    resp = await api.post(
        "/api/v1/flows", content='{"name": "x", "steps": [', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert error(resp)["code"] == "bad_request"


async def test_wrong_field_types_are_422_with_field_paths(api) -> None:
    resp = await api.post(
        "/api/v1/flows",
        json={
            "name": "x",
            "steps": [
                {"id": "a", "type": "http_request", "critical": "very", "config": {"url": "http://x"}},
                {"id": "b", "type": "http_request", "config": {"url": "http://x", "timeoutMs": "soon"}},
                {
                    "id": "b",
                    "type": "data_transform",
                    "dependsOn": ["ghost"],
                    "config": {"expression": "1 +"},
                },
            ],
        },
    )
    assert resp.status_code == 422
    fields = {(d["field"], d["code"]) for d in error(resp)["details"]}  # type: ignore[union-attr]
    assert ("steps[0].critical", "type") in fields
    assert ("steps[2].id", "duplicate_id") in fields
    assert ("steps[2].dependsOn[0]", "unknown_dependency") in fields
    assert ("steps[2].config.expression", "expression_syntax") in fields
    assert any(f == "steps[1].config.timeoutMs" for f, _ in fields)


async def test_a_cycle_is_refused(api) -> None:
    resp = await api.post(
        "/api/v1/flows",
        json={
            "name": "cyc",
            "steps": [
                {"id": "a", "type": "data_transform", "dependsOn": ["b"], "config": {"expression": "1"}},
                {"id": "b", "type": "data_transform", "dependsOn": ["a"], "config": {"expression": "1"}},
            ],
        },
    )
    assert resp.status_code == 422
    assert any(d["code"] == "cycle" for d in error(resp)["details"])  # type: ignore[union-attr]


async def test_a_definition_over_one_mebibyte_is_413(api) -> None:
    big = {
        "name": "big",
        "steps": [
            {"id": "a", "type": "data_transform", "config": {"template": {"blob": "x" * (1024 * 1024 + 10)}}}
        ],
    }
    resp = await api.post("/api/v1/flows", json=big)
    assert resp.status_code == 413
    assert error(resp)["code"] == "too_large"
    assert (await api.get("/api/v1/flows")).json()["items"] == []


async def test_unknown_ids_are_404(api) -> None:
    for path in (
        "/api/v1/flows/flow_nope",
        "/api/v1/executions/exec_1_nope",
        "/api/v1/executions/exec_1_nope/events",
    ):
        resp = await api.get(path)
        assert resp.status_code == 404, path
        assert error(resp)["code"] == "not_found"


async def test_missing_or_wrong_credentials_are_401(api) -> None:
    assert (await api.get("/api/v1/me", headers={"Authorization": ""})).status_code == 401
    resp = await api.get("/api/v1/me", headers={"Authorization": "Bearer tsk_wrong"})
    assert resp.status_code == 401 and error(resp)["code"] == "unauthorized"
    key = api.headers["Authorization"].split()[1]
    ok = await api.get("/api/v1/me", headers={"Authorization": "", "X-API-Key": key})
    assert ok.status_code == 200


async def test_invalid_variables_are_422(api) -> None:
    flow_id = await create_flow(api, FLOW)
    resp = await api.post(f"/api/v1/flows/{flow_id}/execute", json={"variables": "not-an-object"})
    assert resp.status_code == 422
    assert error(resp)["details"][0]["field"] == "variables"  # type: ignore[index]


async def test_execute_honours_the_idempotency_key(api) -> None:
    flow_id = await create_flow(api, FLOW)
    first = await api.post(f"/api/v1/flows/{flow_id}/execute", json={"idempotencyKey": "order-42"})
    again = await api.post(f"/api/v1/flows/{flow_id}/execute", json={"idempotencyKey": "order-42"})
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["executionId"] == again.json()["executionId"]
    listed = (await api.get("/api/v1/executions", params={"flowId": flow_id})).json()["items"]
    assert len(listed) == 1


async def test_a_new_version_does_not_change_a_running_executions_definition(api) -> None:
    flow_id = await create_flow(api, FLOW)
    v1 = await start(api, flow_id, variables={"n": 5})
    put = await api.put(
        f"/api/v1/flows/{flow_id}",
        content=FLOW.replace("variables.n * 2", "variables.n * 3"),
        headers={"content-type": "application/yaml"},
    )
    assert put.status_code == 200 and put.json()["version"] == 2
    v2 = await start(api, flow_id, variables={"n": 5})
    assert (await wait_status(api, v1, "completed"))["output"] == {"double": 10}
    assert (await wait_status(api, v2, "completed"))["output"] == {"double": 15}
    versions = (await api.get(f"/api/v1/flows/{flow_id}/versions")).json()["items"]
    assert [v["version"] for v in versions] == [2, 1]


async def test_executions_list_filters_and_pages_with_a_cursor(api) -> None:
    flow_id = await create_flow(api, FLOW)
    ids = [await start(api, flow_id) for _ in range(5)]
    for execution_id in ids:
        await wait_status(api, execution_id, "completed")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "status": "completed", "flowId": flow_id} | (
            {"cursor": cursor} if cursor else {}
        )
        page = (await api.get("/api/v1/executions", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert (await api.get("/api/v1/executions", params={"status": "failed", "flowId": flow_id})).json()[
        "items"
    ] == []
    bad = await api.get("/api/v1/executions", params={"cursor": "garbage!"})
    assert bad.status_code == 400


async def test_events_since_and_types(api) -> None:
    detail = await run_flow(api, FLOW)
    everything = await events_of(api, detail["id"])
    assert_log_is_whole(everything)
    later = (await api.get(f"/api/v1/executions/{detail['id']}/events", params={"since": 2})).json()["items"]
    assert [e["seq"] for e in later] == [e["seq"] for e in everything[2:]]
    steps = (await api.get(f"/api/v1/executions/{detail['id']}/events", params={"types": "step."})).json()[
        "items"
    ]
    assert {e["type"] for e in steps} == {"step.started", "step.completed"}


async def test_execution_detail_has_live_status_fields(api) -> None:
    detail = await run_flow(api, FLOW)
    for field in (
        "progressPercentage",
        "currentStep",
        "elapsedTime",
        "estimatedRemainingTime",
        "errorCount",
        "warningCount",
        "completedSteps",
        "totalSteps",
    ):
        assert field in detail, field
    assert detail["progressPercentage"] == 100.0 and detail["estimatedRemainingTime"] == 0
    steps = (await api.get(f"/api/v1/executions/{detail['id']}/steps")).json()["items"]
    assert [(s["stepId"], s["status"], s["output"]) for s in steps] == [("double", "completed", 2)]


async def test_cancel_of_a_finished_execution_is_a_409(api) -> None:
    detail = await run_flow(api, FLOW)
    resp = await api.post(f"/api/v1/executions/{detail['id']}/cancel")
    assert resp.status_code == 409
    assert error(resp)["code"] == "conflict"


async def test_another_organizations_objects_are_404(api, services) -> None:
    from tolstoy.store import identity

    detail = await run_flow(api, FLOW)
    _, other_key = await identity.create_organization(services.db, "intruder")
    headers = {"Authorization": f"Bearer {other_key}"}
    for method, path in (
        ("GET", f"/api/v1/flows/{detail['flowId']}"),
        ("GET", f"/api/v1/executions/{detail['id']}"),
        ("GET", f"/api/v1/executions/{detail['id']}/events"),
        ("POST", f"/api/v1/executions/{detail['id']}/cancel"),
        ("POST", f"/api/v1/flows/{detail['flowId']}/execute"),
    ):
        resp = await api.request(method, path, headers=headers)
        assert resp.status_code == 404, (method, path, resp.text)
    listed = (await api.get("/api/v1/executions", headers=headers)).json()["items"]
    assert listed == []


async def test_only_the_bootstrap_admin_creates_organizations(api, services) -> None:
    from tolstoy.store import identity

    resp = await api.post("/api/v1/organizations", json={"name": "nope"})
    assert resp.status_code == 403
    _, boot_key = await identity.create_organization(services.db, "boot", bootstrap=True)
    created = await api.post(
        "/api/v1/organizations", json={"name": "acme"}, headers={"Authorization": f"Bearer {boot_key}"}
    )
    assert created.status_code == 201
    new_key = created.json()["apiKey"]
    me = (await api.get("/api/v1/me", headers={"Authorization": f"Bearer {new_key}"})).json()
    assert me["organization"]["name"] == "acme"


async def test_api_keys_are_shown_once_and_stored_hashed(api, services) -> None:
    from sqlalchemy import select

    from tolstoy.store.tables import api_keys

    created = (await api.post("/api/v1/api-keys", json={"name": "ci"})).json()
    key = created["key"]
    listed = (await api.get("/api/v1/api-keys")).json()["items"]
    assert key not in str(listed) and any(item["prefix"] == key[:12] for item in listed)
    async with services.db.read() as conn:
        stored = [r.key_hash for r in await conn.execute(select(api_keys.c.key_hash))]
    assert key not in stored
    revoked = await api.delete(f"/api/v1/api-keys/{created['id']}")
    assert revoked.status_code == 204
    assert (await api.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})).status_code == 401


async def test_secrets_are_encrypted_at_rest_and_listed_masked(api, services) -> None:
    from sqlalchemy import select

    from tolstoy.store.tables import secrets

    value = "very-secret-value-0987654321"
    assert (await api.put("/api/v1/secrets/stripe_key", json={"value": value})).status_code == 204
    listed = (await api.get("/api/v1/secrets")).json()["items"]
    assert listed[0]["name"] == "stripe_key" and value not in str(listed)
    async with services.db.read() as conn:
        stored = [r.ciphertext for r in await conn.execute(select(secrets.c.ciphertext))]
    assert stored and value not in stored[0]
    bad = await api.put("/api/v1/secrets/bad-name!", json={"value": "x"})
    assert bad.status_code == 422


@pytest.mark.parametrize("path", ["/health", "/status", "/status/detailed", "/metrics", "/openapi.json"])
async def test_public_endpoints_answer_without_a_key(api, path: str) -> None:
    resp = await api.get(path, headers={"Authorization": ""})
    assert resp.status_code == 200
