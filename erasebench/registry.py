"""Plugin registries for methods and evaluators.

Built-ins register themselves with a decorator in their own module (``methods/esd.py``); the registry
imports every module of the two folders once. Third parties declare entry points in the groups
``erasebench.methods`` and ``erasebench.evaluators``; those are imported only when selected, so one
broken plugin cannot break the others.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from erasebench.api import Evaluator, Method, Plugin
from erasebench.errors import PluginLoadError, UnknownNameError, unknown_name_message

T = TypeVar("T", bound=Plugin)


class Registry(Generic[T]):
    """A name -> plugin class map with lazy third-party entry points.

    Args:
        kind: ``"method"`` or ``"evaluator"`` (used in messages).
        base: The class every plugin must subclass.
        package: The package whose modules hold the built-ins.
        group: The entry-point group for third parties.
    """

    def __init__(self, kind: str, base: type[T], package: str, group: str) -> None:
        self.kind, self.base, self.package, self.group = kind, base, package, group
        self._classes: dict[str, type[T]] = {}
        self._builtins_loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator that registers a plugin under ``name``.

        Raises:
            ValueError: The name is taken, or is not a lowercase identifier.
            TypeError: The class does not subclass the registry's base.
        """

        if not name.isidentifier() or name != name.lower():
            raise ValueError(f"{self.kind} name {name!r} must be a lowercase identifier")

        def decorate(cls: type[T]) -> type[T]:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.kind} {name!r}: {cls!r} must subclass {self.base.__name__}")
            if name in self._classes and self._classes[name] is not cls:
                other = self._classes[name]
                raise ValueError(
                    f"duplicate {self.kind} name {name!r}: {other.__module__}.{other.__qualname__} "
                    f"and {cls.__module__}.{cls.__qualname__}"
                )
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def _load_builtins(self) -> None:
        # Import every module of the built-in folder once; their decorators fill the registry.
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def entry_points(self) -> dict[str, EntryPoint]:
        """Third-party entry points of this registry's group, by name (not imported)."""
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every selectable name: built-ins and third-party entry points (without importing those)."""
        self._load_builtins()
        return sorted(set(self._classes) | set(self.entry_points()))

    def _load_entry_point(self, ep: EntryPoint) -> type[T]:
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party module must not look like our bug
            raise PluginLoadError(
                f"The {self.kind} plugin '{ep.name}' ({ep.value}, from entry point group '{self.group}') "
                f"failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        registered = getattr(obj, "name", "")
        if registered and self._classes.get(registered) is obj and registered != ep.name:
            raise PluginLoadError(
                f"The {self.kind} plugin entry point '{ep.name}' registers itself as '{registered}'; "
                "use one name for both."
            )
        if self._classes.get(ep.name) is not obj:
            self.register(ep.name)(obj)
        return obj

    def get(self, name: str) -> type[T]:
        """The plugin class for ``name``.

        Raises:
            UnknownNameError: No such plugin; the message lists the valid names and the closest one.
            PluginLoadError: A third-party plugin failed to import.
            ValueError: A third-party name collides with a built-in.
        """
        self._load_builtins()
        eps = self.entry_points()
        if name in self._classes:
            if name in eps and self._classes[name].__module__.startswith(self.package):
                raise ValueError(f"third-party {self.kind} '{name}' ({eps[name].value}) collides with a built-in")
            return self._classes[name]
        if name in eps:
            return self._load_entry_point(eps[name])
        raise UnknownNameError(unknown_name_message(self.kind, name, self.names()))

    def load_all(self) -> dict[str, type[T]]:
        """Every plugin that imports, for listing; a broken third-party plugin is a warning."""
        out: dict[str, type[T]] = {}
        for name in self.names():
            try:
                out[name] = self.get(name)
            except PluginLoadError as exc:
                warnings.warn(str(exc), stacklevel=2)
        return out


METHODS: Registry[Method] = Registry("method", Method, "erasebench.methods", "erasebench.methods")
EVALUATORS: Registry[Evaluator] = Registry("evaluator", Evaluator, "erasebench.evaluators", "erasebench.evaluators")

register_method = METHODS.register
register_evaluator = EVALUATORS.register
