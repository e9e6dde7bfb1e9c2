"""``qkd`` channel: BB84 key per link and message, then AES-256-GCM over the classical network.

For every message the two ends run an emulated BB84 session over the path
(:mod:`relay.bb84`): QBER from the path's end-to-end fidelity plus an optional
intercept-resend eavesdropper, sifting, a disclosed sample, abort above the
threshold, verified error correction and privacy amplification. The session
key is expanded with HKDF-SHA256 into an AES-256-GCM key whose ``info`` binds
run, round, node and direction; the same binding plus the public BB84
transcript is the associated data. The payload is the ``ArrayRecord``
serialised without pickle.

Envelope (all public): the header record, ``relay.qkd`` (the BB84 transcript
and the GCM nonce) and, unless the key exchange aborted, ``relay.ciphertext``.
The key never appears in it. An aborted exchange produces an envelope without
ciphertext: the payload is never sent in the clear, and ``decode`` rejects it.

The shared secret that seeds the emulated quantum source is an explicit
constructor argument that both ends must be given out of band; in a real
deployment the key material comes from QKD hardware instead. AES-GCM with a
QKD-derived key is computationally (not information-theoretically) secure.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from relay import physics
from relay.bb84 import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RAW_BITS,
    DEFAULT_SAMPLE_FRACTION,
    BB84Session,
    BB84Transcript,
    EmulatedQKDSource,
)
from relay.channels.base import Channel, ChannelRejected, ChannelReport, Header
from relay.channels.envelope import (
    array_to_numpy,
    check_envelope_header,
    config_record_nbytes,
    get_record,
    new_envelope,
    rejecting_malformed,
)
from relay.channels.registry import register_channel
from relay.channels.serialization import deserialize_array_record, serialize_array_record
from relay.link import PathLink
from relay.options import number
from relay.shared_secret import load_shared_secret

QKD_RECORD = "relay.qkd"
CIPHERTEXT_RECORD = "relay.ciphertext"
_NONCE_BYTES = 12
_PROTOCOL = b"qfl-relay/qkd/v1|"


@register_channel
class QKDChannel(Channel):
    """Payload encrypted with AES-256-GCM under a key from an emulated BB84 exchange.

    Parameters
    ----------
    shared_secret : bytes
        Seed of the emulated quantum source, at least 16 bytes; both ends must
        be given the same value out of band (for example from a file or an
        environment variable on each machine). Never put it in run config.
    eavesdropper : float
        Fraction of BB84 signals an intercept-resend eavesdropper attacks; 1.0
        gives a QBER near 25 % and every key aborts. Both ends must agree.
    raw_bits : int
        Detected BB84 signals per message (>= 1024).
    sample_fraction : float
        Fraction of sifted bits disclosed for QBER estimation.
    confidence : float
        Confidence of the QBER upper bound used to decide an abort.
    abort_threshold : float
        Abort above this QBER upper bound (default 11 %).
    reject_replays : bool
        Reject an envelope this instance has already accepted once.
    """

    name = "qkd"
    options = (
        number(
            "eavesdropper", 0.0, 0.0, 1.0,
            help="fraction of BB84 signals an intercept-resend eavesdropper attacks",
        ),
    )

    @classmethod
    def from_run_config(cls, values: Mapping[str, Any], secret_folder: Path) -> QKDChannel:
        """Build the channel with the shared secret read from ``secret_folder``.

        Raises
        ------
        relay.shared_secret.SecretError
            No usable shared secret (see :mod:`relay.shared_secret`).
        """
        secret = load_shared_secret(secret_folder)
        channel = cls(secret.value, eavesdropper=values["eavesdropper"])
        channel.secret_source = secret.source
        return channel

    def provenance(self) -> dict[str, str]:
        """Where the shared secret was read from (never the secret)."""
        return {} if self.secret_source is None else {"qkd_secret_source": self.secret_source}

    def __init__(
        self,
        shared_secret: bytes,
        *,
        eavesdropper: float = 0.0,
        raw_bits: int = DEFAULT_RAW_BITS,
        sample_fraction: float = DEFAULT_SAMPLE_FRACTION,
        confidence: float = DEFAULT_CONFIDENCE,
        abort_threshold: float = physics.QBER_ABORT_THRESHOLD,
        reject_replays: bool = True,
    ) -> None:
        self._source = EmulatedQKDSource(
            shared_secret,
            eavesdropper=eavesdropper,
            raw_bits=raw_bits,
            sample_fraction=sample_fraction,
            confidence=confidence,
            abort_threshold=abort_threshold,
        )
        self.reject_replays = bool(reject_replays)
        self._accepted: set[bytes] = set()
        self.secret_source: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._source!r})"

    def encode(
        self,
        arrays: ArrayRecord,
        link: PathLink,
        header: Header,
        rng: np.random.Generator,
    ) -> tuple[RecordDict, ChannelReport]:
        """Establish this message's key and encrypt ``arrays``; no ciphertext if it aborts.

        ``rng`` is not used: the key must come from the shared source, and the
        nonce from the operating system.
        """
        session = self._source.establish(_session_label(header), link.end_to_end_fidelity, "sender")
        envelope = new_envelope(self.name, header)
        nonce = os.urandom(_NONCE_BYTES)
        envelope[QKD_RECORD] = ConfigRecord({**session.transcript.to_config(), "nonce": nonce})
        if session.secret_key is None:
            return envelope, self._report(envelope, session.transcript, link)
        ciphertext = AESGCM(_aead_key(session.secret_key, header)).encrypt(
            nonce, serialize_array_record(arrays), _associated_data(header, session.transcript)
        )
        envelope[CIPHERTEXT_RECORD] = ArrayRecord(
            {"ciphertext": Array(np.frombuffer(ciphertext, dtype=np.uint8))}
        )
        return envelope, self._report(envelope, session.transcript, link)

    def decode(
        self,
        envelope: RecordDict,
        link: PathLink,
        header: Header,
        rng: np.random.Generator,
    ) -> tuple[ArrayRecord, ChannelReport]:
        """Re-establish the key at this end, authenticate and decrypt.

        Raises
        ------
        ChannelRejected
            Header for another run/round/node/direction, aborted key exchange,
            transcript that does not match this end's, failed key verification,
            failed authentication (tampered ciphertext, header or transcript),
            or a replay of an envelope already accepted.
        """
        with rejecting_malformed(self.name):
            check_envelope_header(envelope, self.name, header)
            record = get_record(envelope, QKD_RECORD, ConfigRecord)
            session = self._agree_key(BB84Transcript.from_config(record), header, link)
            assert session.secret_key is not None  # _agree_key rejects aborted exchanges
            nonce = record["nonce"]
            if not isinstance(nonce, bytes) or len(nonce) != _NONCE_BYTES:
                raise ChannelRejected(f"qkd envelope nonce must be {_NONCE_BYTES} bytes")
            ciphertext_array = get_record(envelope, CIPHERTEXT_RECORD, ArrayRecord)["ciphertext"]
            ciphertext = array_to_numpy(ciphertext_array)
            if ciphertext.dtype != np.uint8 or ciphertext.ndim != 1:
                raise ChannelRejected("qkd ciphertext must be a 1-D uint8 array")
            try:
                plaintext = AESGCM(_aead_key(session.secret_key, header)).decrypt(
                    nonce, ciphertext.tobytes(), _associated_data(header, session.transcript)
                )
            except InvalidTag as error:
                raise ChannelRejected(
                    "qkd authentication failed: ciphertext, header or transcript was changed, "
                    "or it was encrypted for another run, round, node or direction"
                ) from error
            replay_key = hashlib.sha256(header.associated_data() + nonce).digest()
            if self.reject_replays and replay_key in self._accepted:
                raise ChannelRejected("qkd replay: this envelope was already accepted once")
            arrays = deserialize_array_record(plaintext)
            if self.reject_replays:
                self._accepted.add(replay_key)
            report = self._report(envelope, session.transcript, link)
        return arrays, report

    def _agree_key(
        self, claimed: BB84Transcript, header: Header, link: PathLink
    ) -> BB84Session:
        """Run this end's BB84 session and check it agrees with the sender's transcript.

        Returns the session (its ``secret_key`` is set); raises :class:`ChannelRejected`
        for an aborted exchange or transcripts that differ.
        """
        if claimed.aborted:
            raise ChannelRejected(f"qkd key exchange aborted at the sender: {claimed.reason}")
        session = self._source.establish(
            _session_label(header), link.end_to_end_fidelity, "receiver"
        )
        own = session.transcript
        if session.secret_key is None:
            raise ChannelRejected(f"qkd key exchange aborted: {own.reason}")
        if claimed.verification_hash != own.verification_hash:
            raise ChannelRejected(
                "qkd key verification failed: the error-correction hashes differ "
                "(different shared secret, eavesdropper setting or link?)"
            )
        if claimed != own:
            differing = [
                name
                for name, value in own.to_config().items()
                if claimed.to_config()[name] != value
            ]
            raise ChannelRejected(
                f"qkd public transcript differs from this end's in {', '.join(differing)}"
            )
        return session

    def _report(
        self, envelope: RecordDict, transcript: BB84Transcript, link: PathLink
    ) -> ChannelReport:
        ciphertext = envelope.get(CIPHERTEXT_RECORD)
        ciphertext_bytes = (
            sum(len(array.data) for array in ciphertext.values())
            if isinstance(ciphertext, ArrayRecord)
            else 0
        )
        record = envelope[QKD_RECORD]
        # encode put a ConfigRecord there, and decode accepted only one.
        assert isinstance(record, ConfigRecord)
        n_bytes = ciphertext_bytes + config_record_nbytes(record)
        # Each raw BB84 signal uses one end-to-end pair; sifting and the
        # disclosed sample need one round trip before the payload goes out.
        key_time_s = transcript.raw_bits / link.pair_rate_hz + 2.0 * link.propagation_delay_s
        latency_s = key_time_s + float(
            physics.classical_transfer_latency_s(
                n_bytes, link.propagation_delay_s, link.classical_rate_bps
            )
        )
        return ChannelReport(
            channel=self.name,
            n_bytes=n_bytes,
            latency_s=latency_s,
            fidelity=link.end_to_end_fidelity,
            bell_pairs=transcript.raw_bits,
            classical_bits=transcript.public_bits,
            qber=transcript.qber_estimate,
            key_bits=transcript.key_bits,
            aborted=transcript.aborted,
            reason=transcript.reason or None,
        )


def _session_label(header: Header) -> bytes:
    return _PROTOCOL + header.associated_data()


def _associated_data(header: Header, transcript: BB84Transcript) -> bytes:
    return _PROTOCOL + header.associated_data() + b"|" + transcript.canonical_bytes()


def _aead_key(secret_key: bytes, header: Header) -> bytes:
    """AES-256 key from a session's secret bits: HKDF-SHA256 (RFC 5869; §4.4)."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=hashlib.sha256(_session_label(header)).digest(),
        info=_PROTOCOL + b"aes-256-gcm|" + header.associated_data(),
    ).derive(secret_key)
