"""Import path of the existing framework for routers; see :mod:`tachyon_api.routing`."""

from .routing import Router

__all__ = ["Router"]
