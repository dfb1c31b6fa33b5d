"""Security schemes as dependencies: 1.3's statuses, details and WWW-Authenticate headers, over real HTTP;
auto_error=False; guards on routers; the OpenAPI description each scheme exposes."""

import base64
import secrets
from typing import Optional

import httpx
import pytest

from tachyon_api import Depends, HTTPException, Router, Tachyon
from tachyon_api.security import (
    APIKeyCookie,
    APIKeyHeader,
    APIKeyQuery,
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
    OAuth2PasswordBearer,
)

from .conftest import client_for, serve

bearer = HTTPBearer()
basic = HTTPBasic()
basic_realm = HTTPBasic(realm='Staff "only"')
oauth2 = OAuth2PasswordBearer(tokenUrl="/token")
header_key = APIKeyHeader("X-API-Key")
query_key = APIKeyQuery("api_key")
cookie_key = APIKeyCookie("session")
optional_bearer = HTTPBearer(auto_error=False)
optional_basic = HTTPBasic(auto_error=False)
optional_oauth2 = OAuth2PasswordBearer("/token", auto_error=False)
optional_key = APIKeyHeader("X-API-Key", auto_error=False)


def _basic(value: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}


def _app() -> Tachyon:
    app = Tachyon()

    @app.get("/bearer")
    async def get_bearer(credentials: HTTPAuthorizationCredentials = Depends(bearer)):
        return {"scheme": credentials.scheme, "token": credentials.credentials}

    @app.get("/basic")
    def get_basic(credentials: HTTPBasicCredentials = Depends(basic)):
        return {"username": credentials.username, "password": credentials.password}

    @app.get("/basic-realm")
    def get_basic_realm(credentials: HTTPBasicCredentials = Depends(basic_realm)):
        return credentials.username

    @app.get("/oauth2")
    def get_oauth2(token: str = Depends(oauth2)):
        return token

    @app.get("/header")
    def get_header(key: str = Depends(header_key)):
        return key

    @app.get("/query")
    def get_query(key: str = Depends(query_key)):
        return key

    @app.get("/cookie")
    def get_cookie(key: str = Depends(cookie_key)):
        return key

    @app.get("/optional")
    def get_optional(
        b: Optional[HTTPAuthorizationCredentials] = Depends(optional_bearer),
        basic_credentials: Optional[HTTPBasicCredentials] = Depends(optional_basic),
        token: Optional[str] = Depends(optional_oauth2),
        key: Optional[str] = Depends(optional_key),
    ):
        return {"bearer": b is not None, "basic": basic_credentials is not None, "token": token, "key": key}

    return app


@pytest.fixture(scope="module")
def url():
    with serve(_app()) as base:
        yield base


@pytest.mark.parametrize(
    ("path", "headers", "status", "detail", "challenge"),
    [
        ("/bearer", {}, 403, "Not authenticated", None),
        ("/bearer", {"Authorization": "Basic abc"}, 403, "Not authenticated", None),
        ("/bearer", {"Authorization": "Bearer"}, 403, "Not authenticated", None),
        ("/bearer", {"Authorization": "Bearer a b"}, 403, "Not authenticated", None),
        ("/oauth2", {}, 401, "Not authenticated", "Bearer"),
        ("/oauth2", {"Authorization": "Token x"}, 401, "Not authenticated", "Bearer"),
        ("/basic", {}, 401, "Not authenticated", 'Basic realm="simple"'),
        ("/basic", {"Authorization": "Bearer x"}, 401, "Invalid authentication credentials", 'Basic realm="simple"'),
        ("/basic", {"Authorization": "Basic !!!notbase64"}, 401, "Invalid authentication credentials", None),
        ("/basic", _basic("no-colon"), 401, "Invalid authentication credentials", None),
        (
            "/basic",
            {"Authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()},
            401,
            "Invalid authentication credentials",
            None,
        ),
        ("/basic-realm", {}, 401, "Not authenticated", 'Basic realm="Staff \\"only\\""'),
        ("/header", {}, 403, "Not authenticated", None),
        ("/header", {"X-API-Key": ""}, 403, "Not authenticated", None),
        ("/query", {}, 403, "Not authenticated", None),
        ("/cookie", {}, 403, "Not authenticated", None),
    ],
)
def test_rejections_over_http(url, path, headers, status, detail, challenge):
    response = httpx.get(url + path, headers=headers)
    assert response.status_code == status
    assert response.json() == {"detail": detail}
    if challenge is not None:
        assert response.headers["www-authenticate"] == challenge
    elif status == 403:
        assert "www-authenticate" not in response.headers


def test_accepted_credentials_over_http(url):
    assert httpx.get(url + "/bearer", headers={"Authorization": "bearer abc.def"}).json() == {
        "scheme": "bearer",
        "token": "abc.def",
    }
    assert httpx.get(url + "/basic", headers=_basic("ada:pa:ss")).json() == {"username": "ada", "password": "pa:ss"}
    assert httpx.get(url + "/basic", headers=_basic("zoë:")).json() == {"username": "zoë", "password": ""}
    assert httpx.get(url + "/oauth2", headers={"Authorization": "Bearer tok"}).json() == "tok"
    assert httpx.get(url + "/header", headers={"x-api-key": "k1"}).json() == "k1"
    assert httpx.get(url + "/query?api_key=k2").json() == "k2"
    assert httpx.get(url + "/cookie", cookies={"session": "k3"}).json() == "k3"


def test_auto_error_false_gives_none(url):
    assert httpx.get(url + "/optional").json() == {"bearer": False, "basic": False, "token": None, "key": None}
    garbage = {"Authorization": "Basic %%%", "X-API-Key": ""}
    assert httpx.get(url + "/optional", headers=garbage).json() == {
        "bearer": False,
        "basic": False,
        "token": None,
        "key": None,
    }
    both = {"Authorization": "Bearer t", "X-API-Key": "k"}
    assert httpx.get(url + "/optional", headers=both).json() == {
        "bearer": True,
        "basic": False,
        "token": "t",
        "key": "k",
    }


def test_router_guard_with_compare_digest():
    expected = "s3cret-key"

    def require_key(key: str = Depends(APIKeyHeader("X-API-Key"))) -> str:
        if not secrets.compare_digest(key.encode(), expected.encode()):
            raise HTTPException(403, "Invalid API key")
        return key

    calls = []
    admin = Router(prefix="/admin", dependencies=[Depends(require_key)])

    @admin.get("/stats")
    def stats():
        calls.append(1)
        return {"ok": True}

    app = Tachyon()
    app.include_router(admin)
    client = client_for(app)
    assert client.get("/admin/stats").status_code == 403
    wrong = client.get("/admin/stats", headers={"X-API-Key": "guess"})
    assert (wrong.status_code, wrong.json()) == (403, {"detail": "Invalid API key"})
    assert calls == []
    assert client.get("/admin/stats", headers={"X-API-Key": expected}).json() == {"ok": True}
    assert calls == [1]


def test_openapi_description_of_each_scheme():
    assert (bearer.scheme_name, bearer.model) == ("HTTPBearer", {"type": "http", "scheme": "bearer"})
    assert HTTPBearer(bearerFormat="JWT").model == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert basic.model == {"type": "http", "scheme": "basic"}
    assert oauth2.model == {"type": "oauth2", "flows": {"password": {"tokenUrl": "/token", "scopes": {}}}}
    assert header_key.model == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert query_key.model == {"type": "apiKey", "in": "query", "name": "api_key"}
    assert cookie_key.model == {"type": "apiKey", "in": "cookie", "name": "session"}
    named = APIKeyHeader(name="X-Key", scheme_name="partnerKey", description="Issued on request")
    assert named.scheme_name == "partnerKey"
    assert named.model["description"] == "Issued on request"
    assert OAuth2PasswordBearer("/t", scopes={"read": "Read"}).model["flows"]["password"]["scopes"] == {"read": "Read"}


def test_realm_cannot_inject_headers():
    with pytest.raises(ValueError):
        HTTPBasic(realm="a\r\nSet-Cookie: x=1")


def test_basic_credentials_with_junk_characters_in_the_base64_are_refused_over_http():
    """``dXNlcjpwYXNz`` is ``user:pass``; with characters outside base64 inserted, a lenient decoder drops them
    and accepts the credentials. HTTPBasic refuses them (401), so a filter matching the header's exact value
    cannot be bypassed by padding it with junk."""
    app = Tachyon()

    @app.get("/who")
    def who(credentials: HTTPBasicCredentials = Depends(basic)):
        return {"user": credentials.username}

    with serve(app) as url:
        assert httpx.get(url + "/who", headers={"Authorization": "Basic dXNlcjpwYXNz"}).json() == {"user": "user"}
        for junk in ("dXNl!cjpwYXNz", "dXNl*cjpw.YXNz", "dXNlcjpwYXNz$"):
            response = httpx.get(url + "/who", headers={"Authorization": f"Basic {junk}"})
            assert response.status_code == 401, junk
            assert response.json() == {"detail": "Invalid authentication credentials"}
