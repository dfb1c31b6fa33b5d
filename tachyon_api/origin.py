"""Where the running package was installed from, so the install hints and the requirement ``tachyon new``
writes point there.

The package is not on a package index yet: a ``pip install 'tachyon-api-next[lint]'`` hint would send the
user to a dead end. pip records where it installed a distribution from in ``direct_url.json`` (PEP 610): a
folder (a checkout, editable or not), an archive, or a version-control URL. An install from an index has no
such file, and then the hints name the package as an index would.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

__all__ = ["DISTRIBUTION", "Origin", "from_direct_url", "install_hint", "origin", "requirement"]

DISTRIBUTION = "tachyon-api-next"
_PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Origin:
    """``url`` as PEP 610 writes it (``None``: an index); ``editable``: a folder installed with ``pip -e``."""

    url: str | None = None
    editable: bool = False

    @property
    def folder(self) -> Path | None:
        """The local folder (a checkout) the package comes from, if any."""
        if self.url is None or not self.url.startswith("file:"):
            return None
        path = Path(url2pathname(urlsplit(self.url).path))
        return path if path.is_dir() else None


def from_direct_url(info: dict[str, Any]) -> Origin:
    """The origin a PEP 610 ``direct_url.json`` describes, its URL as a PEP 508 direct reference takes it."""
    url = info["url"]
    vcs = info.get("vcs_info")
    if vcs:
        url = f"{vcs['vcs']}+{url}@{vcs['commit_id']}"
    if info.get("subdirectory"):
        url += f"#subdirectory={info['subdirectory']}"
    return Origin(url, bool(info.get("dir_info", {}).get("editable")))


def origin() -> Origin:
    """Where the running code comes from: the ``direct_url.json`` of the installed distribution that holds this
    very module (another copy may be on ``sys.path``, such as a checkout's ``*.egg-info``), else, for code run
    from a checkout that was never installed, that checkout; else an index."""
    for dist in metadata.distributions(name=DISTRIBUTION):
        text = dist.read_text("direct_url.json")
        if not text:
            continue
        found = from_direct_url(json.loads(text))
        if found.editable:
            runs_here = found.folder is not None and _PACKAGE.is_relative_to(found.folder.resolve())
        else:
            runs_here = Path(str(dist.locate_file("tachyon_api/__init__.py"))).resolve() == _PACKAGE / "__init__.py"
        if runs_here:
            return found
    checkout = _PACKAGE.parent
    pyproject = checkout / "pyproject.toml"
    if pyproject.is_file() and f'name = "{DISTRIBUTION}"' in pyproject.read_text(encoding="utf-8"):
        return Origin(checkout.as_uri(), editable=True)
    return Origin()


def _pip_args(extras: str, source: Origin) -> list[str]:
    named = f"{DISTRIBUTION}[{extras}]" if extras else DISTRIBUTION
    if source.editable and source.folder is not None:
        return ["-e", f"{source.folder}[{extras}]" if extras else str(source.folder)]
    if source.url is not None:
        return [f"{named} @ {source.url}"]
    return [named]


def requirement(extras: str = "", *, version: str | None = None, source: Origin | None = None) -> str:
    """A requirements.txt line for this package with ``extras``, from where the running copy came from; from
    an index, at least ``version``."""
    source = origin() if source is None else source
    args = _pip_args(extras, source)
    if source.url is None and version:
        args[-1] += f">={version}"
    return " ".join(args)


def install_hint(extras: str = "", *, source: Origin | None = None) -> str:
    """The ``pip install ...`` command that adds ``extras`` to the environment running this package."""
    return "pip install " + shlex.join(_pip_args(extras, origin() if source is None else source))
