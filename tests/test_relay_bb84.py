"""Bit-level BB84 emulation behind the qkd channel."""

from __future__ import annotations

import numpy as np
import pytest

from relay import physics
from relay.bb84 import BB84Transcript, EmulatedQKDSource, toeplitz_hash

SECRET = bytes(range(32))


def test_toeplitz_hash_matches_explicit_matrix_product():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, 300, dtype=np.uint8)
    output_bits = 70
    seed = rng.integers(0, 2, bits.size + output_bits - 1, dtype=np.uint8)
    rows, columns = np.indices((output_bits, bits.size))
    matrix = seed[rows - columns + bits.size - 1]
    assert np.array_equal(toeplitz_hash(bits, seed, output_bits), (matrix @ bits) % 2)


def test_both_ends_derive_the_same_key_from_the_shared_source():
    sender = EmulatedQKDSource(SECRET).establish(b"session-1", 0.96, "sender")
    receiver = EmulatedQKDSource(SECRET).establish(b"session-1", 0.96, "receiver")
    assert not sender.transcript.aborted
    assert sender.transcript == receiver.transcript
    assert sender.secret_key == receiver.secret_key
    assert len(sender.secret_key) * 8 >= sender.transcript.key_bits >= 256
    other = EmulatedQKDSource(SECRET).establish(b"session-2", 0.96, "sender")
    assert other.secret_key != sender.secret_key


def test_sifting_keeps_about_half_and_qber_follows_fidelity():
    transcript = (
        EmulatedQKDSource(SECRET, raw_bits=65536).establish(b"s", 0.94, "sender").transcript
    )
    assert transcript.sifted_bits == pytest.approx(32768, rel=0.02)
    expected = physics.qber_from_fidelity(0.94)
    # Binomial standard error of the disclosed sample, times 5.
    tolerance = 5 * np.sqrt(expected * (1 - expected) / transcript.sample_bits)
    assert transcript.qber_estimate == pytest.approx(expected, abs=tolerance)
    assert transcript.qber_upper_bound > transcript.qber_estimate


def test_key_length_is_the_shor_preskill_fraction_of_the_kept_bits():
    transcript = EmulatedQKDSource(SECRET).establish(b"s", 0.97, "sender").transcript
    kept = transcript.sifted_bits - transcript.sample_bits
    fraction = physics.secret_key_fraction(transcript.qber_upper_bound)
    assert transcript.key_bits == int(np.floor(kept * fraction)) - 64


def test_full_intercept_resend_gives_quarter_qber_and_aborts():
    source = EmulatedQKDSource(SECRET, eavesdropper=1.0)
    session = source.establish(b"s", 1.0, "sender")
    assert session.secret_key is None
    assert session.transcript.aborted
    assert session.transcript.qber_estimate == pytest.approx(0.25, abs=0.03)
    assert "exceeds the abort threshold" in session.transcript.reason


def test_partial_eavesdropper_matches_the_intercept_resend_formula():
    transcript = (
        EmulatedQKDSource(SECRET, eavesdropper=0.3, raw_bits=65536, abort_threshold=0.4)
        .establish(b"s", 0.95, "sender")
        .transcript
    )
    expected = physics.bb84_qber(0.95, 0.3)
    tolerance = 5 * np.sqrt(expected * (1 - expected) / transcript.sample_bits)
    assert transcript.qber_estimate == pytest.approx(expected, abs=tolerance)


def test_poor_link_aborts_even_without_an_eavesdropper():
    session = EmulatedQKDSource(SECRET).establish(b"s", 0.80, "sender")
    assert session.transcript.aborted and session.secret_key is None


def test_transcript_round_trips_through_config_and_hides_nothing_secret():
    source = EmulatedQKDSource(SECRET)
    session = source.establish(b"s", 0.97, "sender")
    config = session.transcript.to_config()
    assert BB84Transcript.from_config(config) == session.transcript
    assert SECRET.hex() not in repr(source) and "secret_key" not in repr(session)
    with pytest.raises(ValueError, match="key_bits"):
        BB84Transcript.from_config({**config, "key_bits": "many"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shared_secret": b"short"}, "shared_secret"),
        ({"shared_secret": "text-is-not-bytes-at-all"}, "shared_secret"),
        ({"shared_secret": SECRET, "eavesdropper": 1.5}, "eavesdropper"),
        ({"shared_secret": SECRET, "raw_bits": 10}, "raw_bits"),
        ({"shared_secret": SECRET, "sample_fraction": 1.0}, "sample_fraction"),
    ],
)
def test_source_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        EmulatedQKDSource(**options)
