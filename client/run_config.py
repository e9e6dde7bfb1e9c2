"""The ClientApp's run config: parsed once per message and handed to mods and handlers.

:func:`build_config_mod` is the outermost mod of the ClientApp. It validates
``context.run_config`` (with the app's overrides) once, and for the rest of that message
the other mods and the handlers read the typed result with :func:`current_config`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from logging import WARNING
from typing import Any

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

from relay.channels import CHANNEL_NAMES, register_channel, registered_channels
from task.config import RunConfig, RunConfigError, parse_run_config

_CURRENT: ContextVar[RunConfig] = ContextVar("sagin_qfl_run_config")


def current_config() -> RunConfig:
    """The run config of the message being handled.

    Raises
    ------
    RuntimeError
        Called outside a message that went through :func:`build_config_mod`.
    """
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError(
            "no run config for this message: the ClientApp's first mod must be "
            "client.run_config.build_config_mod"
        ) from None


@contextmanager
def using_config(config: RunConfig) -> Iterator[RunConfig]:
    """Make ``config`` the :func:`current_config` inside the block."""
    token = _CURRENT.set(config)
    try:
        yield config
    finally:
        _CURRENT.reset(token)


def error_reply(msg: Message, reason: str) -> Message:
    """A Flower error reply to ``msg`` with ``reason``, logged as a warning."""
    log(WARNING, "ClientApp: %s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def build_config_mod(overrides: Mapping[str, Any] | None = None) -> Mod:
    """The mod that parses the run config once per message (put it first).

    Parameters
    ----------
    overrides : Mapping[str, Any], optional
        Run config values that take precedence (runs started from Python).

    The mod carries the channels registered when it was built, so a plug-in channel
    registered by the program that starts a simulation is known, with its run-config
    options, in every process that runs the ClientApp (Ray workers unpickle the app).
    """
    channels = registered_channels()

    def config_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        for channel in channels:
            if channel.name not in CHANNEL_NAMES:
                register_channel(channel)
        try:
            config = parse_run_config(context.run_config, overrides)
        except RunConfigError as error:
            return error_reply(msg, f"run config unusable: {error}")
        with using_config(config):
            return call_next(msg, context)

    return config_mod
