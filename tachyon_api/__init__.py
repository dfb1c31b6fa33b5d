"""tachyon_api: a fast ASGI framework with FastAPI-style decorators and background tasks that run after the
response, reliably, observably, in-process or on Redis + RQ."""

from msgspec import Struct

from .applications import Tachyon
from .cache import (
    BaseCacheBackend,
    CacheConfig,
    InMemoryCacheBackend,
    MemcachedCacheBackend,
    RedisCacheBackend,
    cache,
    create_cache_config,
    get_cache_config,
    set_cache_config,
)
from .datastructures import UploadFile
from .dependencies import Depends, injectable
from .exceptions import HTTPException
from .params import Body, Cookie, File, Form, Header, Path, Query
from .requests import HTTPConnection, Request
from .routing import Router
from .tasks import BackgroundTask, BackgroundTasks
from .websockets import WebSocket, WebSocketDisconnect, WebSocketException, WebSocketState

__version__ = "0.1.0"

__all__ = [
    "Tachyon",
    "Struct",
    "Query",
    "Body",
    "Path",
    "Header",
    "Cookie",
    "Form",
    "File",
    "UploadFile",
    "injectable",
    "Depends",
    "HTTPException",
    "Router",
    "cache",
    "CacheConfig",
    "create_cache_config",
    "set_cache_config",
    "get_cache_config",
    "InMemoryCacheBackend",
    "BaseCacheBackend",
    "RedisCacheBackend",
    "MemcachedCacheBackend",
    "Request",
    "HTTPConnection",
    "WebSocket",
    "WebSocketDisconnect",
    "WebSocketException",
    "WebSocketState",
    "BackgroundTasks",
    "BackgroundTask",
]
