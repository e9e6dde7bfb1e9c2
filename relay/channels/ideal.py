"""``ideal`` channel: arrays cross the link unchanged over the classical network."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from relay import physics
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

ARRAYS_RECORD = "relay.arrays"


@register_channel
class IdealChannel(Channel):
    """Lossless classical transfer; the baseline every other channel is compared with.

    Reports the payload bytes and the latency ``8 bytes / R + d/c`` over the
    path's bottleneck rate and propagation delay. It neither protects nor
    authenticates anything: the public header check only catches honest
    misrouting.
    """

    name = "ideal"

    def encode(
        self,
        arrays: ArrayRecord,
        link: PathLink,
        header: Header,
        rng: np.random.Generator,
    ) -> tuple[RecordDict, ChannelReport]:
        """Wrap a copy of ``arrays`` in an envelope."""
        envelope = new_envelope(self.name, header)
        envelope[ARRAYS_RECORD] = copy_array_record(arrays)
        return envelope, self._report(array_record_nbytes(arrays), link)

    def decode(
        self,
        envelope: RecordDict,
        link: PathLink,
        header: Header,
        rng: np.random.Generator,
    ) -> tuple[ArrayRecord, ChannelReport]:
        """Return the arrays of a well-formed envelope for this header."""
        with rejecting_malformed(self.name):
            check_envelope_header(envelope, self.name, header)
            arrays = copy_array_record(get_record(envelope, ARRAYS_RECORD, ArrayRecord))
        return arrays, self._report(array_record_nbytes(arrays), link)

    def _report(self, n_bytes: int, link: PathLink) -> ChannelReport:
        latency_s = physics.classical_transfer_latency_s(
            n_bytes, link.propagation_delay_s, link.classical_rate_bps
        )
        return ChannelReport(channel=self.name, n_bytes=n_bytes, latency_s=float(latency_s))
