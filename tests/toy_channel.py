"""A toy relay channel with one run-config option, written as a user would add one.

This file is the whole channel: importing it registers ``relay='toy'`` and its option
``toy-copies`` (tests/test_channel_plugin.py shows that nothing else needs to change).
It sends the arrays unchanged and bills ``toy-copies`` copies of them.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from relay.channels.base import Channel, ChannelReport, Header
from relay.channels.envelope import (
    array_record_nbytes,
    check_envelope_header,
    copy_array_record,
    get_record,
    new_envelope,
    rejecting_malformed,
)
from relay.channels.registry import register_channel
from relay.link import PathLink
from relay.options import integer

PAYLOAD = "toy.arrays"


@register_channel
class ToyChannel(Channel):
    """Arrays sent unchanged, ``toy-copies`` times over (a toy for the plug-in test)."""

    name = "toy"
    options = (integer("toy-copies", 1, 1, 8, help="copies of every message sent"),)

    def __init__(self, toy_copies: int = 1) -> None:
        self.copies = toy_copies

    def encode(
        self, arrays: ArrayRecord, link: PathLink, header: Header, rng: np.random.Generator
    ) -> tuple[RecordDict, ChannelReport]:
        envelope = new_envelope(self.name, header)
        envelope[PAYLOAD] = copy_array_record(arrays)
        return envelope, self._report(arrays)

    def decode(
        self, envelope: RecordDict, link: PathLink, header: Header, rng: np.random.Generator
    ) -> tuple[ArrayRecord, ChannelReport]:
        with rejecting_malformed(self.name):
            check_envelope_header(envelope, self.name, header)
            arrays = copy_array_record(get_record(envelope, PAYLOAD, ArrayRecord))
        return arrays, self._report(arrays)

    def _report(self, arrays: ArrayRecord) -> ChannelReport:
        return ChannelReport(channel=self.name, n_bytes=self.copies * array_record_nbytes(arrays))
