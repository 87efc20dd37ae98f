"""A package imported without running its ``__init__`` (for heavy ``__init__`` files that
import far more than the submodules served here need: FunASR's, ``onnxruntime.tools``')."""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Callable, Mapping
from typing import Any


def bare_package(
    name: str, lazy_exports: Mapping[str, Callable[[], Any]]
) -> types.ModuleType | None:
    """Package ``name`` as a module whose ``__init__`` has not run: its submodules import
    as usual, and each of ``lazy_exports`` (a name the real ``__init__`` exports) is
    imported when first asked for. None when ``name`` is not an installed package. The
    caller puts it in ``sys.modules``."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return None
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__spec__ = spec
    package.__package__ = name

    def lazy(attr: str) -> Any:
        if attr in lazy_exports:
            return lazy_exports[attr]()
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    package.__dict__["__getattr__"] = lazy
    return package
