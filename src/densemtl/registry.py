"""Name -> class registries with helpful errors (one per kind: datasets, models, weightings, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Registry", "lookup"]

T = TypeVar("T")


def lookup(registry: dict[str, T], kind: str, name: str) -> T:
    """Return ``registry[name]`` or raise a ``ValueError`` listing the valid names."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; available: {sorted(registry)}")
    return registry[name]


class Registry(Generic[T]):
    """A named mapping filled by a decorator: ``@REG.register("name")``.

    Args:
        kind: what the registry holds, used in error messages ("model", "dataset", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        return lookup(self._items, self.kind, name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
