"""Project and code scaffolding behind ``tachyon new`` and ``tachyon generate``.

The templates are plain files under ``templates/`` (``string.Template`` placeholders such as ``${Class}``),
so the code they produce can be read and edited as code. Every writer checks all its target paths first and
writes nothing when one exists: scaffolding never overwrites a user's work.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

__all__ = ["GENERATORS", "Names", "ScaffoldError", "create_project", "generate", "names_for"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ScaffoldError(Exception):
    """A name or a target the scaffolder refuses; the message says why, for the command line."""


@dataclass(frozen=True)
class Names:
    """The spellings of one name: ``order-items`` gives module ``order_items``, class ``OrderItems``,
    URL prefix ``/order-items`` and title ``Order items``."""

    module: str
    Class: str
    prefix: str
    title: str


def names_for(raw: str) -> Names:
    """Validate ``raw`` as a project or module name (hyphens become underscores)."""
    module = raw.strip().replace("-", "_")
    if not _IDENTIFIER.match(module):
        raise ScaffoldError(f"{raw!r} is not a valid name: use letters, digits, '_' or '-', not starting with a digit")
    if keyword.iskeyword(module) or keyword.issoftkeyword(module):
        raise ScaffoldError(f"{raw!r} is a Python keyword and cannot name a module")
    words = [w for w in module.split("_") if w]
    return Names(
        module=module,
        Class="".join(w[:1].upper() + w[1:] for w in words),
        prefix="/" + "-".join(words).lower(),
        title=" ".join(words).capitalize(),
    )


def _render(kind: str, template: str, values: dict[str, str]) -> str:
    text = resources.files(__package__).joinpath("templates", kind, template).read_text(encoding="utf-8")
    return Template(text).substitute(values)


def _write_all(files: dict[Path, str]) -> list[Path]:
    existing = [str(path) for path in files if path.exists()]
    if existing:
        raise ScaffoldError(f"refusing to overwrite existing file(s): {', '.join(existing)}")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)


def create_project(name: str, parent: Path) -> Path:
    """Write the skeleton of project ``name`` into ``parent/name``, which must not exist yet."""
    from . import __version__
    from .origin import origin, requirement

    names = names_for(name)
    root = Path(parent) / names.module
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another name or --path")
    source = origin()
    # Not on an index yet: point the project where this copy was installed from (a checkout, most often).
    where = "" if source.url is None else "# where the tachyon_api that wrote this project was installed from\n"
    values = {"project": names.module, "requirement": where + requirement("speed", version=__version__, source=source)}
    layout = {
        "app.py": "app.py.tmpl",
        "config.py": "config.py.tmpl",
        ".env.example": "env.example.tmpl",
        ".gitignore": "gitignore.tmpl",
        "requirements.txt": "requirements.txt.tmpl",
        "pytest.ini": "pytest.ini.tmpl",
        "ruff.toml": "ruff.toml.tmpl",
        "README.md": "README.md.tmpl",
        "modules/__init__.py": "modules_init.py.tmpl",
        "shared/__init__.py": "shared_init.py.tmpl",
        "shared/exceptions.py": "shared_exceptions.py.tmpl",
        "shared/dependencies.py": "shared_dependencies.py.tmpl",
        "tests/__init__.py": "tests_init.py.tmpl",
        "tests/conftest.py": "tests_conftest.py.tmpl",
        "tests/test_app.py": "tests_test_app.py.tmpl",
    }
    _write_all({root / target: _render("project", template, values) for target, template in layout.items()})
    return root


# What each generator writes into its folder: (file name, template); ``{m}`` is the module name.
_LAYOUTS: dict[str, list[tuple[str, str]]] = {
    "service": [
        ("__init__.py", "service_init.py.tmpl"),
        ("{m}_dto.py", "dto.py.tmpl"),
        ("{m}_repository.py", "repository.py.tmpl"),
        ("{m}_service.py", "service.py.tmpl"),
        ("{m}_controller.py", "service_controller.py.tmpl"),
    ],
    "controller": [("{m}_controller.py", "controller.py.tmpl")],
    "repository": [("{m}_repository.py", "repository.py.tmpl")],
    "dto": [("{m}_dto.py", "dto.py.tmpl")],
    "middleware": [("{m}_middleware.py", "middleware.py.tmpl")],
}
GENERATORS = tuple(_LAYOUTS)


def generate(kind: str, name: str, base: Path | None = None, *, tests: bool = True, crud: bool = False) -> list[Path]:
    """Write a ``kind`` (one of :data:`GENERATORS`) named ``name``; returns the files written.

    A service goes to ``base/<name>/`` (``base`` defaults to ``./modules``); a middleware to ``base/``
    (default ``./middlewares``). A controller, repository or DTO goes to ``./modules/<name>/`` by default,
    and, as tachyon-api 1.3 did, to ``base/<name>_<kind>.py`` alone when ``base`` is given: one self-contained
    file dropped into a folder of the user's, with no test and no ``__init__.py`` added there. Otherwise
    the test goes to ``tests/`` beside the code unless ``tests`` is false, and folders get an ``__init__.py``
    so the generated tests import their code relatively, whatever ``base`` is.
    """
    if kind not in _LAYOUTS:
        raise ScaffoldError(f"unknown generator {kind!r}; choose one of {', '.join(GENERATORS)}")
    if crud and kind != "service":
        raise ScaffoldError("--crud applies to 'service' only")
    names = names_for(name)
    values = {"module": names.module, "Class": names.Class, "prefix": names.prefix, "title": names.title}
    if kind == "service":
        # Without the update route, the controller must not import its DTO (ruff's F401).
        values["update_import"] = f"\n    {names.Class}Update," if crud else ""
        values["crud_routes"] = _render("generate", "service_controller_crud.py.tmpl", values) if crud else ""
        values["crud_tests"] = _render("generate", "test_service_crud.py.tmpl", values) if crud else ""
    single_file = base is not None and kind in ("controller", "repository", "dto")
    if kind == "middleware" or single_file:
        folder = Path(base or "middlewares")
    else:
        folder = Path(base or "modules") / names.module
    files = {
        folder / target.format(m=names.module): _render("generate", template, values)
        for target, template in _LAYOUTS[kind]
    }
    if single_file:
        return _write_all(files)
    packages = [folder]
    if tests:
        packages.append(folder / "tests")
        files[folder / "tests" / f"test_{names.module}_{kind}.py"] = _render("generate", f"test_{kind}.py.tmpl", values)
    for package in packages:
        init = package / "__init__.py"
        if init not in files and not init.exists():
            module_folder = package == folder and kind != "middleware"
            files[init] = _render("generate", "package_init.py.tmpl", values) if module_folder else ""
    return _write_all(files)
