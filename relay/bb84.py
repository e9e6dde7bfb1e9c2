"""Bit-level emulation of a BB84 key exchange over a relay path.

:class:`EmulatedQKDSource` stands in for QKD hardware. Both ends of a link hold
one, built from the same caller-provided secret; for a given session label,
path fidelity and eavesdropper fraction, both obtain the same emulated
measurement record and therefore the same key, without the key ever travelling.
In a real deployment the key comes from QKD hardware and this class goes away.

One session follows the recipe of ``shared/research/relay_physics.md`` §4.3:

1. ``raw_bits`` detected signals; Alice's bits come from SHAKE-256 of the
   session seed (a CSPRNG: disclosed sample bits reveal nothing about the rest).
2. Independent random bases for Alice and Bob. Bob's bit, when his basis
   matches, is Alice's bit flipped with probability ``Q0 = 2(1 - F)/3`` (§4.2);
   an intercept-resend eavesdropper measures a fraction ``f_e`` of the signals
   in a random basis and resends, randomising Bob's bit when she chose the wrong
   basis. Together: ``Q = Q0 + f_e (1/4 - Q0/2)`` (§4.1).
3. Sifting keeps the matching bases.
4. A random ``sample_fraction`` of the sifted bits is disclosed; the QBER
   estimate gets a one-sided Clopper–Pearson upper bound ``Q_U``.
5. Abort when ``Q_U`` exceeds the threshold (11 %, asymptotic).
6. Error correction is emulated (its leak ``h(Q_U)`` per key bit is charged and
   Bob ends with Alice's key) and verified with a 64-bit Toeplitz hash.
7. Privacy amplification by Toeplitz hashing to
   ``floor(n (1 - 2 h(Q_U))) - 64`` bits (Shor–Preskill rate with the
   verification hash charged); abort if that is under ``min_key_bits``.

All randomness a real protocol makes public (bases, sample positions, hash
seeds) and the channel noise come from numpy generators seeded from the session
seed, so both ends agree; only the public transcript may be sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from relay import physics

VERIFICATION_HASH_BITS = 64
"""Length of the universal hash that verifies error correction (§4.3 step 6)."""

MIN_SECRET_BITS = 256
"""Smallest key worth keeping: one AES-256 key (§4.3 step 8)."""

DEFAULT_RAW_BITS = 16384
"""Detected BB84 signals per key exchange."""

DEFAULT_SAMPLE_FRACTION = 0.2
"""Share of the sifted bits disclosed to estimate the QBER."""

DEFAULT_CONFIDENCE = 0.99
"""Confidence of the QBER upper bound that decides an abort."""

_SEED_LABEL = b"qfl-relay/bb84/v1|"


@dataclass(frozen=True)
class BB84Transcript:
    """Everything a BB84 session makes public; safe to put in a message.

    Attributes
    ----------
    raw_bits : int
        Detected signals (each used one end-to-end pair of the path).
    sifted_bits : int
        Signals with matching bases.
    sample_bits : int
        Sifted bits disclosed to estimate the QBER.
    sample_errors : int
        Disagreements in the disclosed sample.
    qber_estimate : float
        ``sample_errors / sample_bits``.
    qber_upper_bound : float
        One-sided Clopper–Pearson upper bound used for the abort decision.
    key_bits : int
        Secret bits after privacy amplification (0 when aborted).
    public_bits : int
        Classical bits disclosed: both parties' bases, the sample, the
        error-correction leak and the verification hash.
    aborted : bool
        True when no key was established.
    reason : str
        Why it aborted ("" otherwise).
    verification_hash : str
        Hex of the 64-bit hash of the corrected key ("" when aborted earlier).
    """

    raw_bits: int
    sifted_bits: int
    sample_bits: int
    sample_errors: int
    qber_estimate: float
    qber_upper_bound: float
    key_bits: int
    public_bits: int
    aborted: bool
    reason: str
    verification_hash: str

    def to_config(self) -> dict[str, Any]:
        """Values for a Flower ``ConfigRecord``."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: Any) -> BB84Transcript:
        """Read a transcript from untrusted config values.

        Raises
        ------
        ValueError
            A field is missing or has the wrong type.
        """
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name not in config:
                raise ValueError(f"BB84 transcript is missing {spec.name!r}")
            value = config[spec.name]
            expected = {"int": int, "float": float, "bool": bool, "str": str}[str(spec.type)]
            if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"BB84 transcript {spec.name!r} must be an int, got {value!r}")
            if expected is float and not isinstance(value, float):
                raise ValueError(f"BB84 transcript {spec.name!r} must be a float, got {value!r}")
            if expected in (bool, str) and not isinstance(value, expected):
                raise ValueError(
                    f"BB84 transcript {spec.name!r} must be a {expected.__name__}, got {value!r}"
                )
            values[spec.name] = value
        return cls(**values)

    def canonical_bytes(self) -> bytes:
        """Deterministic encoding, for binding the transcript into associated data."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class BB84Session:
    """Result of one emulated BB84 session at one end."""

    transcript: BB84Transcript
    secret_key: bytes | None = field(repr=False)
    """Privacy-amplified key (``None`` when aborted). Never log or send it."""


class EmulatedQKDSource:
    """Emulated QKD hardware shared by the two ends of a link.

    Parameters
    ----------
    shared_secret : bytes
        At least 16 bytes, provided by the caller and identical at both ends
        (for example read from a file or an environment variable on each
        machine). It seeds the emulated quantum source; it is never derived from
        a constant in code and never sent.
    eavesdropper : float
        Fraction of signals an intercept-resend eavesdropper attacks, in [0, 1].
    raw_bits : int
        Detected signals per session (>= 1024).
    sample_fraction : float
        Fraction of sifted bits disclosed for QBER estimation, in (0, 1).
    confidence : float
        Confidence of the QBER upper bound, in (0, 1).
    abort_threshold : float
        Abort when the QBER upper bound exceeds this (default 11 %).
    min_key_bits : int
        Abort when privacy amplification leaves fewer secret bits.
    """

    def __init__(
        self,
        shared_secret: bytes,
        *,
        eavesdropper: float = 0.0,
        raw_bits: int = DEFAULT_RAW_BITS,
        sample_fraction: float = DEFAULT_SAMPLE_FRACTION,
        confidence: float = DEFAULT_CONFIDENCE,
        abort_threshold: float = physics.QBER_ABORT_THRESHOLD,
        min_key_bits: int = MIN_SECRET_BITS,
    ) -> None:
        if not isinstance(shared_secret, bytes) or len(shared_secret) < 16:
            raise ValueError(
                "shared_secret must be bytes of length >= 16, provided by the caller at both "
                "ends (never a constant in code)"
            )
        if isinstance(eavesdropper, bool) or not 0.0 <= float(eavesdropper) <= 1.0:
            raise ValueError(f"eavesdropper must be a fraction in [0, 1], got {eavesdropper!r}")
        if isinstance(raw_bits, bool) or not isinstance(raw_bits, int) or raw_bits < 1024:
            raise ValueError(f"raw_bits must be an int >= 1024, got {raw_bits!r}")
        if not 0.0 < float(sample_fraction) < 1.0:
            raise ValueError(f"sample_fraction must lie in (0, 1), got {sample_fraction!r}")
        if not 0.0 < float(confidence) < 1.0:
            raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
        if not 0.0 < float(abort_threshold) < 0.5:
            raise ValueError(f"abort_threshold must lie in (0, 0.5), got {abort_threshold!r}")
        if isinstance(min_key_bits, bool) or not isinstance(min_key_bits, int) or min_key_bits < 1:
            raise ValueError(f"min_key_bits must be an int >= 1, got {min_key_bits!r}")
        self._shared_secret = shared_secret
        self.eavesdropper = float(eavesdropper)
        self.raw_bits = raw_bits
        self.sample_fraction = float(sample_fraction)
        self.confidence = float(confidence)
        self.abort_threshold = float(abort_threshold)
        self.min_key_bits = min_key_bits

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eavesdropper={self.eavesdropper}, raw_bits={self.raw_bits}, "
            f"sample_fraction={self.sample_fraction}, confidence={self.confidence}, "
            f"abort_threshold={self.abort_threshold})"
        )

    def establish(
        self, session_label: bytes, fidelity: float, role: Literal["sender", "receiver"]
    ) -> BB84Session:
        """Run one emulated BB84 session and return this end's view.

        Parameters
        ----------
        session_label : bytes
            Unique per session (run, round, node, direction); public.
        fidelity : float
            End-to-end fidelity of the path the signals take.
        role : {"sender", "receiver"}
            Alice (the encoding end) or Bob (the decoding end).

        Returns
        -------
        BB84Session
            Public transcript and, unless aborted, the secret key.
        """
        if role not in ("sender", "receiver"):
            raise ValueError(f"role must be 'sender' or 'receiver', got {role!r}")
        seed = hmac.new(self._shared_secret, _SEED_LABEL + session_label, hashlib.sha256).digest()
        public_rng = _generator(seed, b"public")
        channel_rng = _generator(seed, b"channel")
        alice_sifted, bob_sifted = self._sifted_bits(seed, fidelity, public_rng, channel_rng)
        tally, keep = self._disclose_sample(alice_sifted, bob_sifted, public_rng)
        n_sample = tally.sample_bits
        if n_sample == 0 or keep.size == 0:
            return tally.aborted("too few sifted bits to estimate the QBER and keep a key")
        qber_estimate = tally.sample_errors / n_sample
        qber_upper = physics.clopper_pearson_upper(tally.sample_errors, n_sample, self.confidence)
        if qber_upper > self.abort_threshold:
            return tally.aborted(
                f"QBER {qber_estimate:.3f} (upper bound {qber_upper:.3f}) exceeds the "
                f"abort threshold {self.abort_threshold:.3f}",
                qber_estimate,
                qber_upper,
            )
        secret_bits = (
            math.floor(int(keep.size) * float(physics.secret_key_fraction(qber_upper)))
            - VERIFICATION_HASH_BITS
        )
        if secret_bits < self.min_key_bits:
            return tally.aborted(
                f"secret key too short: {max(secret_bits, 0)} bits < {self.min_key_bits} "
                f"(QBER upper bound {qber_upper:.3f})",
                qber_estimate,
                qber_upper,
            )
        # Emulated error correction: Bob's corrected key is Alice's; its leak is charged.
        corrected = (
            alice_sifted[keep]
            if role == "sender"
            else _emulate_error_correction(bob_sifted[keep], alice_sifted[keep])
        )
        return tally.established(corrected, secret_bits, qber_estimate, qber_upper, public_rng)

    def _sifted_bits(
        self,
        seed: bytes,
        fidelity: float,
        public_rng: np.random.Generator,
        channel_rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Alice's and Bob's bits where their bases match (§4.3 steps 1-3).

        Bob's bit is Alice's, flipped with the path's QBER ``Q0``, or random where
        the eavesdropper measured in the wrong basis (§4.1, §4.2).
        """
        n = self.raw_bits
        alice_bits = np.unpackbits(
            np.frombuffer(hashlib.shake_256(seed + b"|alice").digest((n + 7) // 8), np.uint8)
        )[:n]
        alice_basis = public_rng.integers(0, 2, n, dtype=np.uint8)
        bob_basis = public_rng.integers(0, 2, n, dtype=np.uint8)

        qber_without_eve = float(physics.qber_from_fidelity(fidelity))
        intercepted = channel_rng.random(n) < self.eavesdropper
        eve_basis = channel_rng.integers(0, 2, n, dtype=np.uint8)
        channel_flip = (channel_rng.random(n) < qber_without_eve).astype(np.uint8)
        coin = channel_rng.integers(0, 2, n, dtype=np.uint8)
        randomised = intercepted & (eve_basis != alice_basis)
        bob_bits = np.where(randomised, coin, alice_bits ^ channel_flip)

        sifted = alice_basis == bob_basis
        return alice_bits[sifted], bob_bits[sifted]

    def _disclose_sample(
        self, alice_sifted: np.ndarray, bob_sifted: np.ndarray, public_rng: np.random.Generator
    ) -> tuple[_Tally, np.ndarray]:
        """Compare a random ``sample_fraction`` of the sifted bits (§4.3 step 4).

        Returns the session's counts and the positions of the sifted bits kept for the key.
        """
        n_sifted = int(alice_sifted.size)
        n_sample = int(round(self.sample_fraction * n_sifted))
        order = public_rng.permutation(n_sifted)
        sample, keep = order[:n_sample], np.sort(order[n_sample:])
        tally = _Tally(
            raw_bits=self.raw_bits,
            sifted_bits=n_sifted,
            sample_bits=n_sample,
            sample_errors=int(np.count_nonzero(alice_sifted[sample] != bob_sifted[sample])),
        )
        return tally, keep


@dataclass(frozen=True)
class _Tally:
    """The counts every outcome of a session reports, known once the sample is checked."""

    raw_bits: int
    sifted_bits: int
    sample_bits: int
    sample_errors: int

    @property
    def public_bits(self) -> int:
        """Both parties' bases and both copies of the disclosed sample."""
        return 2 * self.raw_bits + 2 * self.sample_bits

    def aborted(self, reason: str, qber: float = 0.0, upper: float = 1.0) -> BB84Session:
        """A session that ends without a key."""
        transcript = BB84Transcript(
            raw_bits=self.raw_bits,
            sifted_bits=self.sifted_bits,
            sample_bits=self.sample_bits,
            sample_errors=self.sample_errors,
            qber_estimate=qber,
            qber_upper_bound=upper,
            key_bits=0,
            public_bits=self.public_bits,
            aborted=True,
            reason=reason,
            verification_hash="",
        )
        return BB84Session(transcript=transcript, secret_key=None)

    def established(
        self,
        corrected: np.ndarray,
        secret_bits: int,
        qber_estimate: float,
        qber_upper: float,
        public_rng: np.random.Generator,
    ) -> BB84Session:
        """Verify the corrected key and amplify it to ``secret_bits`` (§4.3 steps 6-7)."""
        n_key = int(corrected.size)
        leak_bits = math.ceil(float(physics.binary_entropy(qber_upper)) * n_key)
        hash_seed = public_rng.integers(0, 2, n_key + VERIFICATION_HASH_BITS - 1, dtype=np.uint8)
        amplification_seed = public_rng.integers(0, 2, n_key + secret_bits - 1, dtype=np.uint8)
        verification = toeplitz_hash(corrected, hash_seed, VERIFICATION_HASH_BITS)
        secret = toeplitz_hash(corrected, amplification_seed, secret_bits)
        transcript = BB84Transcript(
            raw_bits=self.raw_bits,
            sifted_bits=self.sifted_bits,
            sample_bits=self.sample_bits,
            sample_errors=self.sample_errors,
            qber_estimate=qber_estimate,
            qber_upper_bound=qber_upper,
            key_bits=secret_bits,
            public_bits=self.public_bits + leak_bits + VERIFICATION_HASH_BITS,
            aborted=False,
            reason="",
            verification_hash=np.packbits(verification).tobytes().hex(),
        )
        return BB84Session(transcript=transcript, secret_key=np.packbits(secret).tobytes())


def toeplitz_hash(bits: np.ndarray, seed_bits: np.ndarray, output_bits: int) -> np.ndarray:
    """Multiply a bit vector by a random Toeplitz matrix over GF(2).

    ``T[i, j] = seed[i - j + n - 1]``, so ``T x`` is the slice
    ``[n - 1, n - 1 + l)`` of the convolution ``seed * x``, computed with an FFT
    and reduced mod 2 (§4.3 step 7; a universal hash family for privacy
    amplification and key verification).

    Parameters
    ----------
    bits : numpy.ndarray
        Input bits ``x`` (0/1), length ``n``.
    seed_bits : numpy.ndarray
        Public random bits, length ``n + l - 1``.
    output_bits : int
        Output length ``l``.

    Returns
    -------
    numpy.ndarray
        ``l`` bits as uint8.
    """
    n = bits.size
    if seed_bits.size != n + output_bits - 1:
        raise ValueError(f"seed needs {n + output_bits - 1} bits, got {seed_bits.size}")
    size = 1 << (seed_bits.size + n - 2).bit_length()
    seed_spectrum = np.fft.rfft(seed_bits.astype(np.float64), size)
    product = np.fft.irfft(seed_spectrum * np.fft.rfft(bits.astype(np.float64), size), size)
    window = product[n - 1 : n - 1 + output_bits]
    return (np.rint(window).astype(np.int64) & 1).astype(np.uint8)


def _emulate_error_correction(bob_key: np.ndarray, alice_key: np.ndarray) -> np.ndarray:
    """Bob's key after a successful error-correction protocol: his bits with every error fixed."""
    return bob_key ^ (bob_key ^ alice_key)


def _generator(seed: bytes, purpose: bytes) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(seed + b"|" + purpose).digest()))
