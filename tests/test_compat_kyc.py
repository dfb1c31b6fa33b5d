"""tests/compat_kyc_app.py, an application written against tachyon-api 1.3's documented API (its KYC example's
features), imported and exercised over real HTTP and WebSocket under uvicorn."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import serve


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    from .compat_kyc_app import app

    with serve(app) as base:
        yield base


def ws_url(url: str, path: str) -> str:
    return url.replace("http://", "ws://", 1) + path


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def token(url: str, username: str, password: str) -> str:
    answer = httpx.post(f"{url}/auth/login", json={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 600
    return body["access_token"]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_health_middlewares_and_cors(url: str) -> None:
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["up_since"] > 0  # the startup handler ran
    headers = health.headers
    assert headers["x-kyc-service"] == "demo" and headers["x-content-type-options"] == "nosniff"
    assert float(headers["x-process-time"]) >= 0  # the 1.3-style decorated middleware
    preflight = httpx.options(
        f"{url}/customers",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert httpx.get(f"{url}/countries").json() == ["AR", "ES", "MX", "US"]


def test_login_and_bearer_authentication(url: str) -> None:
    wrong = httpx.post(f"{url}/auth/login", json={"username": "alice", "password": "nope"})
    assert (wrong.status_code, wrong.json()) == (401, {"detail": "Wrong username or password"})
    assert httpx.post(f"{url}/auth/login", json={"username": "alice"}).status_code == 422
    alice = token(url, "alice", "alice-pass")
    assert httpx.get(f"{url}/auth/me", headers=bearer(alice)).json() == {"username": "alice", "role": "analyst"}
    missing = httpx.get(f"{url}/customers")
    assert (missing.status_code, missing.json()) == (403, {"detail": "Not authenticated"})  # HTTPBearer, as 1.3
    forged = httpx.get(f"{url}/customers", headers=bearer(alice[:-4] + "AAAA"))
    assert (forged.status_code, forged.json()) == (401, {"detail": "Invalid or expired token"})
    assert forged.headers["www-authenticate"] == "Bearer"


def test_onboarding_with_background_verification_and_the_admin_feed(url: str) -> None:
    alice = token(url, "alice", "alice-pass")
    admin = token(url, "admin", "admin-pass")

    async def scenario() -> tuple[list[dict], list[dict], dict, dict]:
        async with (
            connect(ws_url(url, "/admin/ws"), additional_headers=bearer(admin)) as via_optional,
            connect(ws_url(url, "/admin/events"), additional_headers=bearer(admin)) as via_bearer,
        ):
            greetings = [json.loads(await via_optional.recv()), json.loads(await via_bearer.recv())]
            async with httpx.AsyncClient(base_url=url, headers=bearer(alice)) as client:
                good = await client.post(
                    "/customers", json={"full_name": "Ada Lovelace", "document_number": "GB123456", "country": "GB"}
                )
                bad = await client.post(
                    "/customers", json={"full_name": "Bob", "document_number": "12", "country": "ES"}
                )
            assert good.status_code == 201 and bad.status_code == 201
            assert good.json()["status"] == "pending"  # answered before the verification ran
            events = [json.loads(await via_optional.recv()) for _ in range(2)]
            assert [json.loads(await via_bearer.recv()) for _ in range(2)] == events
            return greetings, events, good.json(), bad.json()

    greetings, events, good, bad = run(scenario())
    assert greetings == [{"event": "welcome", "user": "admin"}] * 2
    assert {(e["customer_id"], e["status"]) for e in events} == {(good["id"], "verified"), (bad["id"], "rejected")}
    with httpx.Client(base_url=url, headers=bearer(alice)) as client:
        assert client.get(f"/customers/{good['id']}").json()["status"] == "verified"
        rejected = client.get(f"/customers/{bad['id']}").json()
        assert (rejected["status"], rejected["reason"]) == ("rejected", "document number not recognised")
        assert [c["id"] for c in client.get("/customers", params={"status": "verified"}).json()] == [good["id"]]
        assert len(client.get("/customers", params={"limit": 1}).json()) == 1
        assert client.get("/customers/nobody").status_code == 404
        again = client.post("/customers", json={"full_name": "Ada", "document_number": "GB123456", "country": "GB"})
        assert again.status_code == 409
        assert again.json() == {
            "success": False,
            "error": "Document GB123456 is already registered",
            "code": "KYC_CONFLICT",
        }
        assert client.get("/admin/stats").status_code == 403
    stats = httpx.get(f"{url}/admin/stats", headers=bearer(admin)).json()
    assert stats["success"] is True and stats["data"]["requested_by"] == "admin"
    assert stats["data"]["by_status"]["verified"] >= 1 and stats["data"]["by_status"]["rejected"] >= 1


def test_admin_sockets_refuse_without_an_admin_token(url: str) -> None:
    alice = token(url, "alice", "alice-pass")

    async def optional_user_socket(headers: dict[str, str] | None) -> tuple[dict, int | None]:
        async with connect(ws_url(url, "/admin/ws"), additional_headers=headers) as ws:
            first = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return first, ws.close_code

    assert run(optional_user_socket(None)) == ({"error": "admin token required"}, 1008)
    assert run(optional_user_socket(bearer(alice))) == ({"error": "admin token required"}, 1008)

    async def refused(headers: dict[str, str] | None) -> int:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws_url(url, "/admin/events"), additional_headers=headers):
                pass
        return caught.value.response.status_code

    # HTTPBearer refuses the handshake (its 1008 close before accept: the server answers it with 403); a
    # user who is no admin gets require_admin's 403 as the handshake's HTTP answer.
    assert run(refused(None)) == 403
    assert run(refused(bearer(alice))) == 403
    assert run(refused({"Authorization": "Basic abc"})) == 403


def test_openapi_config_routers_and_security_in_the_schema(url: str) -> None:
    schema = httpx.get(f"{url}/openapi.json").json()
    assert schema["info"]["title"] == "KYC API" and schema["info"]["contact"]["name"] == "Compliance team"
    assert schema["servers"] == [{"url": "http://localhost:8000", "description": "local"}]
    assert schema["components"]["securitySchemes"] == {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
    customers = schema["paths"]["/customers"]
    assert customers["post"]["tags"] == ["customers"] and customers["post"]["security"] == [{"HTTPBearer": []}]
    assert "201" in customers["post"]["responses"]
    assert schema["paths"]["/admin/stats"]["get"]["tags"] == ["admin", "reports"]
    assert customers["post"]["responses"]["500"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ResponseValidationError"
    }
    status = next(p for p in customers["get"]["parameters"] if p["name"] == "status")
    assert status["description"] == "Only customers in this state"
    login = schema["paths"]["/auth/login"]["post"]
    assert login["summary"] == "Exchange a password for a token"
    assert login["requestBody"]["description"] == "The user's credentials"
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "KYC API" in docs.text
