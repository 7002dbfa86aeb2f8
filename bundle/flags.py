"""Yes/no settings and named choices as given on the command line.

``python -m monai.bundle run ... --resume true`` hands the config the text ``'true'``: the command-line parser
(fire) turns only ``True`` and ``False`` into booleans, and ``bool('false')`` is true. Every yes/no id of the
configs is therefore read through :func:`as_flag`, so that ``true``/``false`` in any case, Python's booleans and
0/1 all mean what they say, and anything else stops the run with the id and the value at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

__all__ = ["as_flag", "choose"]

T = TypeVar("T")

_TEXT = {"true": True, "false": False}


def as_flag(value: bool | int | str, name: str) -> bool:
    """``value`` of the setting ``name`` as a bool; raises ``ValueError`` naming both if it is not yes/no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TEXT:
        return _TEXT[value.strip().lower()]
    raise ValueError(f"{name} must be true or false, got {value!r}")


def choose(value: str, name: str, options: Mapping[str, T]) -> T:
    """The option named ``value`` of the setting ``name``; raises ``ValueError`` naming the setting, the value and
    the choices if there is none by that name."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return options[value]
