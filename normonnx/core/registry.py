"""The one registry type behind variants, exporters, runtimes and input suites: a name -> entry
dict whose lookups fail with the list of valid names."""
from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from .errors import BadInput


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


class Registry(dict, Generic[T]):
    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, entry: T) -> T:
        """Add an entry (anything with a `name`); names are checked once, here."""
        assert entry.name not in self, f"{self.what} {entry.name!r} registered twice"
        self[entry.name] = entry
        return entry

    def lookup(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            raise BadInput(f"unknown {self.what} {name!r}: valid {self.what}s are {', '.join(self)}") from None


def names(value) -> tuple[str, ...] | None:
    """Registry names as an option type holds them: None (every one / the default) or a tuple. One name
    given as a string is that name, never its letters."""
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def freeze_names(obj, *fields: str) -> None:
    """In a frozen dataclass's __post_init__: each field of registry names through `names`."""
    for f in fields:
        object.__setattr__(obj, f, names(getattr(obj, f)))
