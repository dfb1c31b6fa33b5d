"""A Griffe extension for the docs site's API reference (mkdocs.yml loads it).

The docstrings are written for readers of the code, with Sphinx roles (``:class:`BackgroundTasks```), which
Markdown would print as they are: they become plain code. Special methods (``__repr__``, ``__len__``, ...)
stay out of the member lists, where they would bury the named API; ``__init__``'s signature is still shown
as the class's own (``merge_init_into_class``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):`~?([^`]+)`")


class ReadableReference(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"``\1``", obj.docstring.value)
        if obj.is_class:  # removed from the model, so the class's re-exports (aliases) lose them too
            for name in [name for name in obj.members if name.startswith("__") and name.endswith("__")]:
                if name != "__init__":
                    obj.del_member(name)
