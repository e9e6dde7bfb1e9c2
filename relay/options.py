"""Run-config options: how every run-config key is declared, core keys and channel keys alike.

An :class:`Option` names a key, its default (whose type is the key's type), what is
allowed (in words, for the error message and the README) and a check. The core keys are
declared in :mod:`task.config`; a relay channel declares its own on its class
(:attr:`relay.channels.Channel.options`), and the run-config schema, its validation
messages, the channel's construction and the README's relay table all come from them.

This module sits at the bottom of the package tree (no torch, no PennyLane, no Flower) so
that channels can declare options and the run config can be validated cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One run-config key.

    Parameters
    ----------
    key : str
        The run-config key, kebab-case (``"shots"``).
    default : bool, int, float or str
        The default; its type is the key's type (an int is accepted for a float key).
    allowed : str
        What is allowed, in words that complete "use ...": ``"an integer from 1 to 10"``.
    check : Callable[[Any], bool]
        True for an allowed value of the right type.
    help : str
        One line of what the key does, for the README's tables.
    """

    key: str
    default: Any
    allowed: str
    check: Callable[[Any], bool]
    help: str = ""

    @property
    def kind(self) -> type:
        """The key's Python type, taken from the default."""
        return type(self.default)

    @property
    def argument(self) -> str:
        """The key as a Python identifier (``dp-clip-norm`` -> ``dp_clip_norm``)."""
        return self.key.replace("-", "_")

    def coerce(self, value: Any) -> Any:
        """``value`` as the key's type, or :class:`OptionError` naming what is allowed.

        TOML and ``--run-config`` give ints where a float is meant (``learning-rate=1``);
        a bool is never taken for a number.
        """
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool) != (self.kind is bool) or not isinstance(value, self.kind):
            raise OptionError(
                f"run config '{self.key}' = {value!r} has type {type(value).__name__}; "
                f"allowed: {self.allowed}"
            )
        return value

    def validate(self, value: Any) -> Any:
        """The coerced value if it is allowed, else :class:`OptionError`."""
        value = self.coerce(value)
        if not self.check(value):
            raise OptionError(
                f"run config '{self.key}' = {value!r} is not allowed; use {self.allowed}"
            )
        return value


class OptionError(ValueError):
    """A run-config value is missing, of the wrong type, or outside what is allowed."""


def integer(key: str, default: int, low: int, high: int, help: str = "") -> Option:
    """An integer key in ``[low, high]``."""
    return Option(key, default, f"an integer from {low} to {high}",
                  lambda v: low <= v <= high, help)


def number(
    key: str, default: float, low: float, high: float, help: str = "", low_open: bool = False
) -> Option:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    bracket = "(" if low_open else "["
    return Option(
        key,
        float(default),
        f"a number in {bracket}{low}, {high}]",
        lambda v: math.isfinite(v) and (v > low if low_open else v >= low) and v <= high,
        help,
    )


def choice(key: str, default: str, names: tuple[str, ...], help: str = "") -> Option:
    """One of ``names``."""
    return Option(key, default, "one of " + ", ".join(repr(n) for n in names),
                  lambda v: v in names, help)


def text(key: str, default: str, help: str = "") -> Option:
    """Any string."""
    return Option(key, default, "a string", lambda v: True, help)


def satisfies(validator: Callable[[Any], object]) -> Callable[[Any], bool]:
    """A check from a function that raises ``ValueError`` for a bad value.

    Lets an option reuse the rule its consumer enforces (one rule, checked in one place).
    """

    def check(value: Any) -> bool:
        try:
            validator(value)
        except (TypeError, ValueError):
            return False
        return True

    return check
