"""The convention every config dataclass follows (`UNetConfig`, `TrainConfig`, `AugmentConfig`,
`PostprocessConfig`, `Normalization`): a frozen dataclass that derives from `Config`, checks its values in
`__post_init__` with `check_range` / `check_flag` / `check_choice`, is saved with `to_dict` and rebuilt with
`from_dict`.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Example(Config):
...     size: int = 3
...     span: tuple[float, float] = (0.5, 2.0)
...     def __post_init__(self) -> None:
...         check_range(self, "size", 1, integer=True)
>>> Example.from_dict({"span": [1.0, 4.0]})  # a JSON list becomes the tuple the field holds
Example(size=3, span=(1.0, 4.0))
>>> Example(size=0)
Traceback (most recent call last):
...
ValueError: Example.size must be an integer >= 1; got 0
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, TypeVar

import numpy as np

C = TypeVar("C", bound="Config")


class Config:
    """Serialisation shared by the frozen config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values, JSON-serialisable: nested configs as dicts, numpy scalars as Python numbers."""
        return {field.name: _plain(getattr(self, field.name)) for field in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """The config saved by `to_dict` (also after a JSON round trip): missing keys take their defaults, unknown
        keys are an error, lists become tuples where the field is a tuple, dicts become nested configs."""
        if not isinstance(data, Mapping):
            raise TypeError(
                f"{cls.__name__}.from_dict expects a mapping of field names to values; got {type(data).__name__}"
            )
        known = {field.name for field in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; expected some of {sorted(known)}")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _typed(hints[key], value) for key, value in data.items()})


def with_overrides(config: C, **overrides: Any) -> C:
    """`config` with the fields given a value other than None replaced (options a user left unset keep it).

    >>> from napari_unet.postprocess import PostprocessConfig
    >>> with_overrides(PostprocessConfig(), threshold=0.3, min_size=None).min_size
    16
    """
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _typed(hint: Any, value: Any) -> Any:
    """`value` as read from JSON, made into the field's type where JSON lost it (tuples, nested configs)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is not type(None) and value is not None:
                converted = _typed(option, value)
                if converted is not value:
                    return converted
        return value
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, Mapping):
        return hint.from_dict(value)
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def check_range(
    config: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    open_low: bool = False,
    open_high: bool = False,
    optional: bool = False,
    meaning: str = "",
) -> None:
    """Check the field `name` of `config`: a number (an integer when `integer`; None too when `optional`) within
    [low, high] (open ends with `open_low` / `open_high`; None: unbounded).

    TypeError when it is not a number (bools are not), ValueError when it is out of range or not an integer.
    The message names the field, what was expected and what was found; `meaning` says what the value is.
    """
    value = getattr(config, name)
    if optional and value is None:
        return
    kind = "an integer" if integer else "a number"
    expected = f"{kind}{_bounds(low, high, open_low, open_high)}" + (" or None" if optional else "")
    where = f"{type(config).__name__}.{name}" + (f" ({meaning})" if meaning else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where} must be {expected}; got {value!r}")
    too_low = low is not None and (value <= low if open_low else value < low)
    too_high = high is not None and (value >= high if open_high else value > high)
    if (integer and not isinstance(value, (int, np.integer))) or too_low or too_high or value != value:
        raise ValueError(f"{where} must be {expected}; got {value!r}")


def check_flag(config: Any, name: str) -> None:
    """Check that the field `name` of `config` is a bool (not a string such as "False")."""
    value = getattr(config, name)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{type(config).__name__}.{name} must be True or False; got {value!r}")


def check_choice(config: Any, name: str, choices: Sequence[Any]) -> None:
    """Check that the field `name` of `config` is one of `choices`."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(
            f"{type(config).__name__}.{name} must be one of {', '.join(map(repr, choices))}; got {value!r}"
        )


def _bounds(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if low is not None:
        return f" {'>' if open_low else '>='} {low:g}"
    if high is not None:
        return f" {'<' if open_high else '<='} {high:g}"
    return ""
