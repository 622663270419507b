"""One small generic registry type, used for every kind of plugin (models, losses, sources, runners).

Modelled on timm's ``register_model`` and torchdistill's loss registries: registration by decorator, a
duplicate name is an error, an unknown name raises :class:`~edgekd.errors.UnknownNameError` that
suggests the closest names.

Example:
    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("kd")
    ... def make_kd(**kw): ...
    >>> LOSSES.get("kd") is make_kd
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgekd.errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict] = {}

    def register(self, name: str, **meta) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; ``meta`` is free-form (e.g. a description)."""

        def deco(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, **meta) -> None:
        if name in self._items:
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._items[name] = obj
        self._meta[name] = meta

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._items) from None

    def meta(self, name: str) -> dict:
        self.get(name)
        return dict(self._meta[name])

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
