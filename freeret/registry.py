"""Lazy registries: a config's choices (``scorer=``, ``model.family``, ``model.source``, ``dataset.kind``,
``dataset.source``) as ``name -> "module:attr"`` maps, imported only when a name is looked up.

Registering imports nothing and nothing registers itself by being imported, so no module has to import its
implementations (or they it) for a name to exist; an unknown name is one :class:`~freeret.errors.UnknownNameError`
listing the known ones, whichever registry is asked.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from freeret.errors import UnknownNameError

T = TypeVar("T")


def resolve(ref: str) -> Any:
    """The object a ``"module:attr"`` reference names, importing its module."""
    module, _, attr = ref.partition(":")
    if not attr:
        raise ValueError(f"{ref!r} is not a 'module:attr' reference")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """The names a config may choose for ``what``, each a ``"module:attr"`` reference resolved (once) on lookup,
    or an object added as is; ``message`` words the error for an unknown name (``{what}``, ``{name!r}``, ``{known}``:
    the sorted names)."""

    def __init__(self, what: str, refs: Mapping[str, str] | None = None,
                 message: str = "{what}={name!r} is not one of {known}") -> None:
        self.what = what
        self.message = message
        self._refs: dict[str, str] = dict(refs or {})
        self._loaded: dict[str, T] = {}
        self._order: list[str] = list(self._refs)

    def add(self, name: str, entry: T | str) -> None:
        """Make ``name`` choosable: ``entry`` is a ``"module:attr"`` reference (imported on lookup) or the object."""
        if name not in self._order:
            self._order.append(name)
        self._loaded.pop(name, None)
        self._refs.pop(name, None)
        if isinstance(entry, str):
            self._refs[name] = entry
        else:
            self._loaded[name] = entry

    def names(self) -> tuple[str, ...]:
        """Every name, in the order they were given."""
        return tuple(self._order)

    def check(self, name: Any) -> None:
        """Nothing when ``name`` is known (nothing is imported); else the one error, listing the known names."""
        if name not in self:
            known = tuple(sorted(self._order))
            raise UnknownNameError(self.message.format(what=self.what, name=name, known=", ".join(known)),
                                   self.what, str(name), known)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._refs or name in self._loaded)

    def __getitem__(self, name: str) -> T:
        """The entry for ``name``, importing it on first use; UnknownNameError when there is none."""
        self.check(name)
        if name not in self._loaded:
            self._loaded[name] = resolve(self._refs[name])
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) for every name, in order (imports every entry)."""
        return [(name, self[name]) for name in self._order]

    def refs(self) -> dict[str, str]:
        """The ``"module:attr"`` reference of every lazily registered name (what a test checks without importing)."""
        return dict(self._refs)
