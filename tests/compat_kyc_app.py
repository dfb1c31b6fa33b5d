"""A KYC (know-your-customer) service written against tachyon-api 1.3's documented API only, as its example
application was: routers with prefixes and tags, JWT authentication through ``HTTPBearer``, an admin
WebSocket authenticated with a bearer token (one through an optional user, one guarded by ``HTTPBearer``
itself), the bundled middlewares and a 1.3-style decorated middleware, an OpenAPI configuration, background
verification of new customers, ``@injectable`` services, ``@cache`` and an exception handler.

It imports what 1.3 users import (Starlette's ``WebSocket`` and ``WebSocketDisconnect``, markers with
positional arguments, ``Tachyon(openapi_config)`` by position). ``tests/test_compat_kyc.py`` serves it with
uvicorn and speaks HTTP and WebSocket to it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any, Optional

import jwt
from starlette.websockets import WebSocket, WebSocketDisconnect

from tachyon_api import Body, Depends, HTTPException, Query, Router, Struct, Tachyon, cache, injectable
from tachyon_api.background import BackgroundTasks
from tachyon_api.middlewares import CORSMiddleware, LoggerMiddleware, SecurityHeadersMiddleware
from tachyon_api.openapi import Contact, License, Server, create_openapi_config
from tachyon_api.responses import error_response, success_response
from tachyon_api.security import HTTPAuthorizationCredentials, HTTPBearer

SECRET_KEY = "kyc-demo-secret-key-of-at-least-32-bytes"  # a demo: real services read it from the environment
ALGORITHM = "HS256"
TOKEN_SECONDS = 600
USERS = {
    "admin": {"password": "admin-pass", "role": "admin"},
    "alice": {"password": "alice-pass", "role": "analyst"},
}
DOCUMENT = re.compile(r"[A-Z]{2}\d{6}\Z")  # what the "verification provider" accepts


# --- models ---------------------------------------------------------------------------------------------------
class LoginRequest(Struct):
    username: str
    password: str


class TokenResponse(Struct):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = TOKEN_SECONDS


class CustomerIn(Struct):
    full_name: str
    document_number: str
    country: str


class Customer(Struct):
    id: str
    full_name: str
    document_number: str
    country: str
    status: str = "pending"
    reason: Optional[str] = None


class KYCError(Exception):
    """A business rule refused the request."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- services ---------------------------------------------------------------------------------------------------
@injectable
class CustomerRepository:
    """In memory, one per app (the default singleton scope)."""

    def __init__(self) -> None:
        self.rows: dict[str, Customer] = {}

    def add(self, data: CustomerIn) -> Customer:
        if any(c.document_number == data.document_number for c in self.rows.values()):
            raise KYCError(f"Document {data.document_number} is already registered")
        customer = Customer(
            id=uuid.uuid4().hex[:12],
            full_name=data.full_name,
            document_number=data.document_number,
            country=data.country,
        )
        self.rows[customer.id] = customer
        return customer


@injectable
class AdminFeed:
    """The admin sockets' queues: verification events are pushed to every connected admin."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue] = set()

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self.queues:
            queue.put_nowait(event)


async def verify_customer(customer_id: str, repository: CustomerRepository, feed: AdminFeed) -> None:
    """The background verification: ask the provider, record the outcome, tell the admins."""
    await asyncio.sleep(0.05)  # the provider's latency
    customer = repository.rows[customer_id]
    if DOCUMENT.match(customer.document_number):
        customer.status = "verified"
    else:
        customer.status, customer.reason = "rejected", "document number not recognised"
    feed.publish({"event": "verification", "customer_id": customer_id, "status": customer.status})


# --- authentication ----------------------------------------------------------------------------------------------
security = HTTPBearer()
optional_security = HTTPBearer(auto_error=False)


def create_token(username: str) -> str:
    claims = {"sub": username, "role": USERS[username]["role"], "exp": int(time.time()) + TOKEN_SECONDS}
    return jwt.encode(claims, SECRET_KEY, algorithm=ALGORITHM)


def decode_token(token: str) -> dict[str, Any]:
    try:
        claims = jwt.decode(token, SECRET_KEY, algorithms=[ALGORITHM])
    except jwt.PyJWTError:
        raise HTTPException(401, "Invalid or expired token", headers={"WWW-Authenticate": "Bearer"}) from None
    return {"username": claims["sub"], "role": claims["role"]}


def get_current_user(credentials: HTTPAuthorizationCredentials = Depends(security)) -> dict[str, Any]:
    return decode_token(credentials.credentials)


def get_optional_user(
    credentials: Optional[HTTPAuthorizationCredentials] = Depends(optional_security),
) -> Optional[dict[str, Any]]:
    if credentials is None:
        return None
    try:
        return decode_token(credentials.credentials)
    except HTTPException:
        return None


def require_admin(user: dict = Depends(get_current_user)) -> dict[str, Any]:
    if user["role"] != "admin":
        raise HTTPException(403, "Admins only")
    return user


# --- routers ------------------------------------------------------------------------------------------------------
auth_router = Router(prefix="/auth", tags=["auth"])
customers_router = Router(prefix="/customers", tags=["customers"], dependencies=[Depends(get_current_user)])
admin_router = Router(prefix="/admin", tags="admin")


@auth_router.post("/login", response_model=TokenResponse, summary="Exchange a password for a token")
def login(form: LoginRequest = Body(description="The user's credentials")):
    user = USERS.get(form.username)
    if user is None or user["password"] != form.password:
        raise HTTPException(401, "Wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    return {"access_token": create_token(form.username)}


@auth_router.get("/me")
def me(user: dict = Depends(get_current_user)):
    return user


@customers_router.post("/", status_code=201, response_model=Customer)
def register_customer(
    data: CustomerIn,
    background_tasks: BackgroundTasks,
    repository: CustomerRepository = Depends(),
    feed: AdminFeed = Depends(),
):
    customer = repository.add(data)
    background_tasks.add_task(verify_customer, customer.id, repository, feed)
    return customer


@customers_router.get("/", response_model=list[Customer])
def list_customers(
    status: Optional[str] = Query(None, "Only customers in this state"),
    limit: int = Query(50, "At most this many"),
    repository: CustomerRepository = Depends(),
):
    rows = [c for c in repository.rows.values() if status is None or c.status == status]
    return rows[:limit]


@customers_router.get("/{customer_id}", response_model=Customer)
def get_customer(customer_id: str, repository: CustomerRepository = Depends()):
    customer = repository.rows.get(customer_id)
    if customer is None:
        raise HTTPException(404, "Customer not found")
    return customer


@admin_router.get("/stats", tags="reports")
def stats(admin: dict = Depends(require_admin), repository: CustomerRepository = Depends()):
    counts: dict[str, int] = {}
    for customer in repository.rows.values():
        counts[customer.status] = counts.get(customer.status, 0) + 1
    return success_response({"by_status": counts, "requested_by": admin["username"]})


@admin_router.websocket("/ws")
async def admin_socket(
    websocket: WebSocket, user: Optional[dict] = Depends(get_optional_user), feed: AdminFeed = Depends()
):
    """1.3's admin socket: anyone may connect; only an admin's token gets the feed."""
    await websocket.accept()
    if user is None or user["role"] != "admin":
        await websocket.send_json({"error": "admin token required"})
        await websocket.close(code=1008)
        return
    await _stream_feed(websocket, user, feed)


@admin_router.websocket("/events")
async def admin_events(websocket: WebSocket, admin: dict = Depends(require_admin), feed: AdminFeed = Depends()):
    """The same feed behind ``HTTPBearer`` itself: no token, no handshake."""
    await websocket.accept()
    await _stream_feed(websocket, admin, feed)


async def _until_gone(websocket: WebSocket) -> None:
    try:
        while True:
            await websocket.receive_text()  # what the admin sends is ignored
    except WebSocketDisconnect:
        return


async def _stream_feed(websocket: WebSocket, user: dict, feed: AdminFeed) -> None:
    """Send the feed's events until the admin leaves (watched for by a pending receive)."""
    queue: asyncio.Queue = asyncio.Queue()
    feed.queues.add(queue)
    left = asyncio.ensure_future(_until_gone(websocket))
    try:
        await websocket.send_json({"event": "welcome", "user": user["username"]})
        while True:
            event = asyncio.ensure_future(queue.get())
            await asyncio.wait({left, event}, return_when=asyncio.FIRST_COMPLETED)
            if left.done():
                event.cancel()
                return
            await websocket.send_json(event.result())
    except WebSocketDisconnect:
        pass
    finally:
        left.cancel()
        feed.queues.discard(queue)


# --- the app ------------------------------------------------------------------------------------------------------
openapi_config = create_openapi_config(
    title="KYC API",
    description="Customer onboarding with background document verification",
    version="1.3.0",
    contact=Contact(name="Compliance team", email="compliance@example.com"),
    license=License(name="MIT", url="https://opensource.org/licenses/MIT"),
    servers=[Server(url="http://localhost:8000", description="local")],
)
app = Tachyon(openapi_config)  # by position, as 1.3's examples wrote it

app.add_middleware(
    CORSMiddleware,
    allow_origins=["http://localhost:3000"],
    allow_methods=["GET", "POST"],
    allow_headers=["Authorization", "Content-Type"],
    allow_credentials=True,
)
app.add_middleware(SecurityHeadersMiddleware, extra_headers=[("X-KYC-Service", "demo")])
app.add_middleware(LoggerMiddleware, include_headers=True)


@app.middleware("http")
async def process_time(scope, receive, send, app):  # 1.3's decorated middleware form
    started = time.perf_counter()

    async def timed_send(message: dict) -> None:
        if message["type"] == "http.response.start":
            elapsed = f"{time.perf_counter() - started:.6f}".encode()
            message = {**message, "headers": [*message.get("headers", []), (b"x-process-time", elapsed)]}
        await send(message)

    await app(scope, receive, timed_send)


@app.exception_handler(KYCError)
async def kyc_error(request, exc: KYCError):  # 1.3 handlers took the request un-annotated
    return error_response(exc.message, status_code=409, code="KYC_CONFLICT")


@app.on_event("startup")
def started() -> None:
    app.state.started_at = time.time()


@app.get("/health", tags=["health"])
def health():
    return {"status": "ok", "up_since": app.state.started_at}


@app.get("/countries", tags=["reference"])
@cache(TTL=60)
def countries():
    return ["AR", "ES", "MX", "US"]


app.include_router(auth_router)
app.include_router(customers_router)
app.include_router(admin_router)
