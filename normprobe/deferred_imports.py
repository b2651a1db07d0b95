"""Libraries TransformerLens imports at its own import that a run needs late or never.

`import transformer_lens` imports pandas (for its patching tables) and `datasets` (for two helpers that
fetch corpora), and `datasets` imports pyarrow. Together they hold about 80 MB, resident while the
model's weights are, although a run reads pandas only for its tables, after the model is released, and
`datasets` only when its corpus is a dataset. So while TransformerLens imports:

- pandas is a deferred module: its code runs at the first attribute anyone reads from it;
- `datasets` and its submodules are placeholders whose names are deferred: each imports the real
  object at its first use (a call, an attribute, `isinstance`, a subclass). Once TransformerLens is
  imported, the placeholders leave `sys.modules`, so a later `import datasets` is the real one.

Where pandas or `datasets` is imported already, nothing changes.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LOCK = threading.RLock()


class _DeferredModule(types.ModuleType):
    """A module whose code runs at the first read of an attribute its spec does not already give."""

    def __getattr__(self, name: str) -> Any:
        _execute(self)
        return getattr(self, name)


def _execute(module: types.ModuleType) -> None:
    with _LOCK:
        if type(module) is not _DeferredModule:
            return  # another thread ran it
        module.__class__ = types.ModuleType  # type: ignore[assignment]  # plain again before its code runs
        spec = module.__spec__
        assert spec is not None and spec.loader is not None  # set by defer_module
        if spec.submodule_search_locations is not None:
            module.__path__ = list(spec.submodule_search_locations)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(spec.name, None)  # as after any failed import: the next import starts afresh
            raise


def defer_module(name: str) -> None:
    """Put `name` in sys.modules as a deferred module, unless it is imported already or not installed."""
    with _LOCK:
        if name in sys.modules:
            return
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return
        module = importlib.util.module_from_spec(spec)
        if spec.submodule_search_locations is not None:
            del module.__path__  # importing a submodule reads __path__, which then runs the package first
        module.__class__ = _DeferredModule
        sys.modules[name] = module


def is_deferred(name: str) -> bool:
    """Whether `name` is in sys.modules and its code has not run yet."""
    return type(sys.modules.get(name)) is _DeferredModule


class DeferredName:
    """`from package.module import name`, answered by a placeholder: the real object comes at first use."""

    def __init__(self, module: str, name: str) -> None:
        self._module = module
        self._name = name

    def resolve(self) -> Any:
        _remove_placeholders()
        return getattr(importlib.import_module(self._module), self._name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resolve(), name)

    def __instancecheck__(self, instance: Any) -> bool:
        return isinstance(instance, self.resolve())

    def __subclasscheck__(self, subclass: type) -> bool:
        return issubclass(subclass, self.resolve())

    def __mro_entries__(self, bases: tuple) -> tuple:
        return (self.resolve(),)

    def __or__(self, other: Any) -> Any:
        return self.resolve() | other

    def __ror__(self, other: Any) -> Any:
        return other | self.resolve()

    # a value read at import time (a constant compared, tested or hashed) is the real one: correct, if not lazy
    def __eq__(self, other: object) -> bool:
        return bool(self.resolve() == other)

    def __hash__(self) -> int:
        return hash(self.resolve())

    def __bool__(self) -> bool:
        return bool(self.resolve())

    def __lt__(self, other: Any) -> bool:
        return bool(self.resolve() < other)

    def __gt__(self, other: Any) -> bool:
        return bool(self.resolve() > other)

    def __le__(self, other: Any) -> bool:
        return bool(self.resolve() <= other)

    def __ge__(self, other: Any) -> bool:
        return bool(self.resolve() >= other)

    def __repr__(self) -> str:
        return f"<deferred {self._module}.{self._name}>"


class _Placeholder(types.ModuleType):
    """Names read while its finder answers imports are deferred; after, they are the real module's."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if any(isinstance(f, _PlaceholderFinder) for f in sys.meta_path):
            return DeferredName(self.__name__, name)
        return getattr(importlib.import_module(self.__name__), name)


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers `package` and its submodules with placeholders, ahead of every other finder."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == self.package or fullname.startswith(self.package + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _Placeholder(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []


def _remove_placeholders() -> None:
    with _LOCK:
        for finder in [f for f in sys.meta_path if isinstance(f, _PlaceholderFinder)]:
            sys.meta_path.remove(finder)
        for name in [n for n, m in list(sys.modules.items()) if isinstance(m, _Placeholder)]:
            del sys.modules[name]


@contextmanager
def deferring(modules: tuple[str, ...] = ("pandas",), placeheld: tuple[str, ...] = ("datasets",)) -> Iterator[None]:
    """While inside: `modules` are deferred and the packages in `placeheld` answered by placeholders."""
    for name in modules:
        defer_module(name)
    with _LOCK:
        for package in placeheld:
            if package not in sys.modules and importlib.util.find_spec(package) is not None:
                sys.meta_path.insert(0, _PlaceholderFinder(package))
    try:
        yield
    finally:
        _remove_placeholders()
