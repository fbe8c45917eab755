"""A name → constructor registry that fails loudly on unknown or duplicate names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a plain sentence.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered constructor, a one-line description and free-form tags.

    Attributes:
        name: Registered name.
        constructor: Builds the component.
        description: One line for help texts.
        tags: Properties callers act on (e.g. ``"isolated"``: the engine backends whose
            artefacts must first be built and run in a child process).
    """

    name: str
    constructor: Callable[..., T]
    description: str
    tags: frozenset[str] = frozenset()


class Registry(Generic[T]):
    """Constructors of one kind of component (models, detectors, backends) by name.

    Args:
        kind: What is registered, for error messages (``"model"``, ``"detector"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, description: str = "", tags: tuple[str, ...] = ()
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a constructor under ``name``.

        Raises:
            RegistryError: If ``name`` is already registered.
        """

        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, fn, doc, frozenset(tags))
            return fn

        return decorator

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        """Return the entry of ``name``.

        Raises:
            RegistryError: If ``name`` is unknown; the message lists the known names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Call the constructor registered as ``name`` with ``kwargs``."""
        return self.entry(name).constructor(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
