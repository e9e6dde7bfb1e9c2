"""The QKD shared secret: environment first, else a per-machine file made once, mode 0600."""

from __future__ import annotations

import multiprocessing
import stat

import pytest

from relay.shared_secret import (
    ENV_VAR,
    FILE_NAME,
    MIN_SECRET_BYTES,
    NEW_SECRET_BYTES,
    SecretError,
    load_shared_secret,
)


@pytest.fixture(autouse=True)
def no_secret_in_environment(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_file_is_created_once_private_and_then_reused(tmp_path):
    first = load_shared_secret(tmp_path / "cache")
    path = tmp_path / "cache" / FILE_NAME
    assert len(first.value) == NEW_SECRET_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.source == f"file {path}"
    assert load_shared_secret(tmp_path / "cache").value == first.value
    assert first.value.hex() not in repr(first)


def test_environment_variable_takes_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "ab" * 20)
    secret = load_shared_secret(tmp_path)
    assert secret.value == bytes.fromhex("ab" * 20) and secret.source == f"${ENV_VAR}"
    assert not (tmp_path / FILE_NAME).exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not hex at all, 0123456789", "is not hexadecimal text"),
        ("ab" * (MIN_SECRET_BYTES - 1), f"holds {MIN_SECRET_BYTES - 1} bytes; at least 16"),
    ],
)
def test_bad_secret_is_refused_without_echoing_it(tmp_path, monkeypatch, text, message):
    monkeypatch.setenv(ENV_VAR, text)
    with pytest.raises(SecretError, match=message) as error:
        load_shared_secret(tmp_path)
    assert text not in str(error.value)


def test_file_readable_by_others_is_refused(tmp_path):
    load_shared_secret(tmp_path)
    path = tmp_path / FILE_NAME
    path.chmod(0o644)
    with pytest.raises(SecretError, match="accessible by other users .*chmod 600"):
        load_shared_secret(tmp_path)


def _load_in_child(folder: str, queue) -> None:
    queue.put(load_shared_secret(folder).value)


def test_concurrent_first_use_agrees_on_one_secret(tmp_path):
    # Simulated clients start together; all must end up with the same secret.
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [
        context.Process(target=_load_in_child, args=(str(tmp_path), queue)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    values = {queue.get(timeout=30) for _ in workers}
    for worker in workers:
        worker.join(timeout=30)
    assert len(values) == 1
    assert values == {load_shared_secret(tmp_path).value}
