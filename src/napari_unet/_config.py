"""Shared by the frozen config dataclasses: rebuilding one from a saved dict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


def check_known_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise a ValueError naming the keys of `data` that are not fields of the dataclass `cls`."""
    known = {field.name for field in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; expected some of {sorted(known)}")
