"""Import path of the existing framework for uploads; see :mod:`tachyon_api.datastructures`."""

from .datastructures import UploadFile

__all__ = ["UploadFile"]
