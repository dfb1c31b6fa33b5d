"""Import path of the existing framework for dependency injection; see :mod:`tachyon_api.dependencies`."""

from .dependencies import SCOPE_REQUEST, SCOPE_SINGLETON, SCOPE_TRANSIENT, Depends, injectable

__all__ = ["Depends", "injectable", "SCOPE_SINGLETON", "SCOPE_REQUEST", "SCOPE_TRANSIENT"]
