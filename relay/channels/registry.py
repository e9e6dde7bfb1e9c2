"""The channel registry: channels by name, their run-config options, and building one.

:func:`register_channel` (a class decorator) makes a :class:`~relay.channels.base.Channel`
known by its ``name``; :mod:`relay.channels` imports the built-in ones. Everything that
depends on which channels exist reads it from here: the run-config schema
(:func:`channel_options`), both apps' construction of the run's channel
(:func:`build_channel`) and the README's relay table (:func:`relay_table`, printed by
``python -m relay.channels``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import KeysView, Mapping
from typing import Any

from relay.channels.base import Channel, ChannelEnd
from relay.options import Option

_REGISTRY: dict[str, type[Channel]] = {}
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*$")
_KEY_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

CHANNEL_NAMES: KeysView[str] = _REGISTRY.keys()
"""Names of the registered channels (a live view: it grows as channels register)."""


def register_channel(cls: type[Channel]) -> type[Channel]:
    """Class decorator: make a channel available under ``cls.name``, with its options.

    Raises
    ------
    TypeError
        ``cls`` is not a concrete :class:`Channel` subclass, or an option is not a
        keyword argument of its ``__init__``.
    ValueError
        The name is invalid or taken by another class; an option key is invalid, its
        default is not allowed by its own check, or another channel declares the key.
    """
    if not (isinstance(cls, type) and issubclass(cls, Channel)) or inspect.isabstract(cls):
        raise TypeError(f"register_channel expects a concrete Channel subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"channel class {cls.__qualname__} needs a class attribute `name` of lowercase "
            f"letters, digits, '-' or '_', got {name!r}"
        )
    registered = _REGISTRY.get(name)
    same_class = registered is not None and (
        (registered.__module__, registered.__qualname__) == (cls.__module__, cls.__qualname__)
    )
    if registered is not None and not same_class:
        raise ValueError(
            f"channel name {name!r} is already registered by {registered.__qualname__}"
        )
    _check_options(cls)
    _REGISTRY[name] = cls
    return cls


def _check_options(cls: type[Channel]) -> None:
    parameters = inspect.signature(cls).parameters
    for option in cls.options:
        if not isinstance(option, Option) or not _KEY_PATTERN.match(option.key):
            raise ValueError(
                f"channel {cls.name!r}: option {option!r} needs a kebab-case key "
                "(lowercase words joined by '-')"
            )
        if option.argument not in parameters:
            raise TypeError(
                f"channel {cls.name!r}: option {option.key!r} needs a keyword argument "
                f"{option.argument!r} in {cls.__qualname__}.__init__"
            )
        option.validate(option.default)  # a default its own check refuses is a bug
        for other in _REGISTRY.values():
            clash = [o for o in other.options if o.key == option.key]
            if clash and other.name != cls.name:
                raise ValueError(
                    f"channel {cls.name!r}: run-config key {option.key!r} is already "
                    f"declared by channel {other.name!r}"
                )


def registered_channels() -> tuple[type[Channel], ...]:
    """The registered channel classes, in registration order."""
    return tuple(_REGISTRY.values())


def channel_options() -> dict[str, tuple[str, Option]]:
    """Every registered channel's options, by run-config key, with the channel's name."""
    return {
        option.key: (name, option) for name, cls in _REGISTRY.items() for option in cls.options
    }


def channel_class(name: str) -> type[Channel]:
    """The registered class of channel ``name``.

    Raises
    ------
    ValueError
        Unknown name; the message lists the registered ones.
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown relay channel {name!r}; allowed: {', '.join(sorted(_REGISTRY))}")
    return cls


def build_channel(name: str, values: Mapping[str, Any], end: ChannelEnd) -> Channel:
    """Build channel ``name`` from run-config values (its options' keys are read) for
    ``end``: the base station, or one UAV (:class:`~relay.channels.base.ChannelEnd`).

    Raises
    ------
    ValueError
        Unknown channel.
    KeyError
        A value for one of its options is missing.
    relay.shared_secret.SecretError
        A channel that needs a pre-shared secret found no usable one for this end.
    """
    return channel_class(name).from_run_config(values, end)


def get_channel(name: str, **options: Any) -> Channel:
    """Build a registered channel by name from constructor keyword arguments.

    For code and tests that hold the arguments already (a qkd keyring, say); runs
    build their channel from the run config with :func:`build_channel`.

    Raises
    ------
    ValueError
        Unknown name (the message lists the allowed ones) or options the channel
        does not accept.
    """
    cls = channel_class(name)
    signature = inspect.signature(cls)
    try:
        signature.bind(**options)
    except TypeError as error:
        accepted = ", ".join(signature.parameters) or "none"
        raise ValueError(
            f"relay channel {name!r}: {error}; accepted options: {accepted}"
        ) from error
    return cls(**options)


def relay_table() -> str:
    """The README's relay table: each channel, what it does, its run-config options."""
    rows = ["| `relay` | what it does | run-config options (default; allowed) |", "|---|---|---|"]
    for name, cls in _REGISTRY.items():
        summary = (inspect.getdoc(cls) or "").split("\n", 1)[0].replace("``", "`")
        options = "<br>".join(
            f"`{o.key}` ({o.default!r}; {o.allowed}): {o.help}" for o in cls.options
        )
        rows.append(f"| `{name}` | {summary} | {options or '-'} |")
    return "\n".join(rows) + "\n"
