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

Secrecy comes from a secret that each UAV pre-shares with the base station
(:mod:`relay.shared_secret`): it seeds the emulated quantum source of that UAV's link,
so the emulated BB84 models the link's QBER, aborts and key rate but adds no secrecy of
its own. Each end holds a :class:`~relay.shared_secret.Keyring`: the base station's
answers for every UAV, a UAV's for itself only, so a captured UAV can read and forge
its own link's traffic and nothing else. The UAV id is bound into the session too. In a
real deployment the key material comes from QKD hardware instead. AES-GCM with a
QKD-derived key is computationally (not information-theoretically) secure.

Replays: every accepted envelope is admitted once by a replay memory
(:mod:`relay.channels.replay`): in memory at the base station (one ServerApp process
per run), in a small file at a UAV, where Flower starts a new ClientApp process for
every message, so a same-round downlink replayed to a fresh process is refused too.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
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
from relay.channels.base import Channel, ChannelEnd, ChannelRejected, ChannelReport, Header
from relay.channels.envelope import (
    array_to_numpy,
    check_envelope_header,
    config_record_nbytes,
    get_record,
    new_envelope,
    rejecting_malformed,
)
from relay.channels.registry import register_channel
from relay.channels.replay import InMemoryReplayGuard, PersistentReplayGuard, ReplayGuard
from relay.channels.serialization import deserialize_array_record, serialize_array_record
from relay.link import PathLink
from relay.options import number
from relay.shared_secret import Keyring, SecretError, load_keyring

QKD_RECORD = "relay.qkd"
CIPHERTEXT_RECORD = "relay.ciphertext"
_NONCE_BYTES = 12
_PROTOCOL = b"qfl-relay/qkd/v2|"


@register_channel
class QKDChannel(Channel):
    """Payload encrypted with AES-256-GCM under a key from an emulated BB84 exchange.

    Parameters
    ----------
    keyring : relay.shared_secret.Keyring
        The pre-shared secrets this end holds, one per UAV: every UAV's at the base
        station, its own at a UAV (:func:`relay.shared_secret.load_keyring`). Each seeds
        the emulated quantum source of its UAV's link. Never put one in run config.
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
        Admit every accepted envelope to ``replay_guard`` (False: accept replays).
    replay_guard : relay.channels.replay.ReplayGuard, optional
        Where accepted envelopes are remembered; default: in this object's memory.
    """

    name = "qkd"
    options = (
        number(
            "eavesdropper", 0.0, 0.0, 1.0,
            help="fraction of BB84 signals an intercept-resend eavesdropper attacks",
        ),
    )

    @classmethod
    def from_run_config(cls, values: Mapping[str, Any], end: ChannelEnd) -> QKDChannel:
        """Build ``end``'s channel: its keyring, and a replay memory that fits it.

        The base station (one ServerApp process per run) remembers in memory; a UAV in
        a file under ``end.state_folder``, since each of its messages is a new process.

        Raises
        ------
        relay.shared_secret.SecretError
            No usable secret for this end (see :mod:`relay.shared_secret`).
        """
        keyring = load_keyring(end.secret_folder, end.uav_id)
        guard: ReplayGuard = (
            InMemoryReplayGuard()
            if end.uav_id is None
            else PersistentReplayGuard(end.state_folder, end.uav_id)
        )
        return cls(keyring, eavesdropper=values["eavesdropper"], replay_guard=guard)

    def provenance(self) -> dict[str, str]:
        """Where this end's secrets were read from (never a secret)."""
        return {"qkd_secret_source": self.keyring.source}

    def __init__(
        self,
        keyring: Keyring,
        *,
        eavesdropper: float = 0.0,
        raw_bits: int = DEFAULT_RAW_BITS,
        sample_fraction: float = DEFAULT_SAMPLE_FRACTION,
        confidence: float = DEFAULT_CONFIDENCE,
        abort_threshold: float = physics.QBER_ABORT_THRESHOLD,
        reject_replays: bool = True,
        replay_guard: ReplayGuard | None = None,
    ) -> None:
        if not isinstance(keyring, Keyring):
            raise ValueError(
                f"keyring must be a relay.shared_secret.Keyring, got {type(keyring).__name__}"
            )
        self.keyring = keyring
        self._settings: dict[str, Any] = {
            "eavesdropper": eavesdropper,
            "raw_bits": raw_bits,
            "sample_fraction": sample_fraction,
            "confidence": confidence,
            "abort_threshold": abort_threshold,
        }
        # Checks the settings now, not at the first message; its random seed is never used.
        self._template = EmulatedQKDSource(os.urandom(16), **self._settings)
        self._sources: dict[str, EmulatedQKDSource] = {}
        self.reject_replays = bool(reject_replays)
        self.replay_guard = replay_guard if replay_guard is not None else InMemoryReplayGuard()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._template!r}, {self.keyring!r})"

    def _source_for(self, uav_id: str) -> EmulatedQKDSource:
        """The emulated QKD hardware of ``uav_id``'s link, seeded with its own secret.

        Raises
        ------
        ChannelRejected
            This end holds no secret for ``uav_id`` (a UAV holds only its own).
        """
        if uav_id not in self._sources:
            try:
                secret = self.keyring.secret_for(uav_id)
            except SecretError as error:
                raise ChannelRejected(f"qkd: {error}") from None
            self._sources[uav_id] = EmulatedQKDSource(secret, **self._settings)
        return self._sources[uav_id]

    def encode(
        self,
        arrays: ArrayRecord,
        link: PathLink,
        header: Header,
        rng: np.random.Generator,
    ) -> tuple[RecordDict, ChannelReport]:
        """Establish this message's key and encrypt ``arrays``; no ciphertext if it aborts.

        ``rng`` is not used: the key must come from the link's source, and the
        nonce from the operating system.

        Raises
        ------
        ChannelRejected
            This end holds no secret for ``link.uav_id``.
        """
        session = self._source_for(link.uav_id).establish(
            _session_label(header, link.uav_id), link.end_to_end_fidelity, "sender"
        )
        envelope = new_envelope(self.name, header)
        nonce = os.urandom(_NONCE_BYTES)
        envelope[QKD_RECORD] = ConfigRecord({**session.transcript.to_config(), "nonce": nonce})
        if session.secret_key is None:
            return envelope, self._report(envelope, session.transcript, link)
        ciphertext = AESGCM(_aead_key(session.secret_key, header, link.uav_id)).encrypt(
            nonce,
            serialize_array_record(arrays),
            _associated_data(header, link.uav_id, session.transcript),
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
            Header for another run/round/node/direction, no secret here for the
            link's UAV (a UAV holds only its own), aborted key exchange, transcript
            that does not match this end's, failed key verification (for example
            encrypted with another UAV's secret), failed authentication (tampered
            ciphertext, header or transcript), or a replay (see ``replay_guard``).
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
                plaintext = AESGCM(_aead_key(session.secret_key, header, link.uav_id)).decrypt(
                    nonce,
                    ciphertext.tobytes(),
                    _associated_data(header, link.uav_id, session.transcript),
                )
            except InvalidTag as error:
                raise ChannelRejected(
                    "qkd authentication failed: ciphertext, header or transcript was changed, "
                    "or it was encrypted for another run, round, node or direction"
                ) from error
            arrays = deserialize_array_record(plaintext)
            if self.reject_replays:
                # Only an authenticated envelope that opened is remembered.
                self.replay_guard.admit(header, nonce)
            report = self._report(envelope, session.transcript, link)
        return arrays, report

    def _agree_key(
        self, claimed: BB84Transcript, header: Header, link: PathLink
    ) -> BB84Session:
        """Run this end's BB84 session and check it agrees with the sender's transcript.

        Returns the session (its ``secret_key`` is set); raises :class:`ChannelRejected`
        for an aborted exchange or transcripts that differ.
        """
        source = self._source_for(link.uav_id)
        if claimed.aborted:
            raise ChannelRejected(f"qkd key exchange aborted at the sender: {claimed.reason}")
        session = source.establish(
            _session_label(header, link.uav_id), link.end_to_end_fidelity, "receiver"
        )
        own = session.transcript
        if session.secret_key is None:
            raise ChannelRejected(f"qkd key exchange aborted: {own.reason}")
        if claimed.verification_hash != own.verification_hash:
            raise ChannelRejected(
                f"qkd key verification failed: the error-correction hashes differ (not "
                f"encrypted with {link.uav_id}'s pre-shared secret, or another eavesdropper "
                f"setting or link?)"
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


def _session_label(header: Header, uav_id: str) -> bytes:
    """Public label of one session: protocol, the link's UAV and the message's header."""
    uav = uav_id.encode()
    return _PROTOCOL + struct.pack(">H", len(uav)) + uav + header.associated_data()


def _associated_data(header: Header, uav_id: str, transcript: BB84Transcript) -> bytes:
    return _session_label(header, uav_id) + b"|" + transcript.canonical_bytes()


def _aead_key(secret_key: bytes, header: Header, uav_id: str) -> bytes:
    """AES-256 key from a session's secret bits: HKDF-SHA256 (RFC 5869; §4.4)."""
    label = _session_label(header, uav_id)
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=hashlib.sha256(label).digest(),
        info=_PROTOCOL + b"aes-256-gcm|" + label,
    ).derive(secret_key)
