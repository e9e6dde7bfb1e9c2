"""Relay channels: the plug-in point for how arrays cross a SAGIN link.

Importing this package registers the built-in channels below (one line each: a new
channel adds its own). See :mod:`relay.channels.base` for the interface and
:mod:`relay.channels.registry` for how a channel's run-config options reach the run.
``python -m relay.channels`` prints the README's relay table.
"""

from relay.channels import ideal, qkd, teleport  # noqa: F401 - registers the channels
from relay.channels.base import (
    DIRECTIONS,
    Channel,
    ChannelEnd,
    ChannelRejected,
    ChannelReport,
    Header,
)
from relay.channels.registry import (
    CHANNEL_NAMES,
    build_channel,
    channel_class,
    channel_options,
    get_channel,
    register_channel,
    registered_channels,
    relay_table,
)

__all__ = [
    "CHANNEL_NAMES",
    "DIRECTIONS",
    "Channel",
    "ChannelEnd",
    "ChannelRejected",
    "ChannelReport",
    "Header",
    "build_channel",
    "channel_class",
    "channel_options",
    "get_channel",
    "register_channel",
    "registered_channels",
    "relay_table",
]
