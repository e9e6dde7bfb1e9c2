"""Relay channels: the plug-in point for how arrays cross a SAGIN link.

Importing this package registers the built-in channels ``ideal``, ``teleport``
and ``qkd``; :func:`get_channel` builds one by name. See
:mod:`relay.channels.base` for the interface and how to add a channel.
"""

from relay.channels.base import (
    CHANNEL_NAMES,
    DIRECTIONS,
    Channel,
    ChannelRejected,
    ChannelReport,
    Header,
    get_channel,
    register_channel,
)
from relay.channels.ideal import IdealChannel
from relay.channels.qkd import QKDChannel
from relay.channels.teleport import TeleportChannel

__all__ = [
    "CHANNEL_NAMES",
    "DIRECTIONS",
    "Channel",
    "ChannelRejected",
    "ChannelReport",
    "Header",
    "IdealChannel",
    "QKDChannel",
    "TeleportChannel",
    "get_channel",
    "register_channel",
]
