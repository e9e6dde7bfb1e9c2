"""QKD secrets, one per UAV: files in deployment, a master on one machine in simulation."""

from __future__ import annotations

import multiprocessing
import stat

import pytest

from relay.shared_secret import (
    LEGACY_ENV_VAR,
    MASTER_ENV_VAR,
    MASTER_FILE_NAME,
    MIN_SECRET_BYTES,
    NEW_SECRET_BYTES,
    SECRET_DIR_ENV_VAR,
    Keyring,
    SecretError,
    derive_uav_secret,
    load_keyring,
)


@pytest.fixture(autouse=True)
def no_secret_in_environment(monkeypatch):
    for name in (MASTER_ENV_VAR, SECRET_DIR_ENV_VAR, LEGACY_ENV_VAR):
        monkeypatch.delenv(name, raising=False)


def write_secret(path, value: bytes, mode: int = 0o600):
    path.write_text(value.hex() + "\n")
    path.chmod(mode)
    return path


# --- simulation: one master on one machine ---------------------------------------------


def test_master_file_is_created_once_private_and_then_reused(tmp_path):
    first = load_keyring(tmp_path / "cache")
    path = tmp_path / "cache" / MASTER_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(path.read_text())) == NEW_SECRET_BYTES
    assert first.source == f"simulation only: derived from file {path}"
    again = load_keyring(tmp_path / "cache")
    assert again.secret_for("uav-3") == first.secret_for("uav-3")
    assert path.read_text().strip() not in repr(first)


def test_every_uav_gets_its_own_secret_from_the_master(tmp_path):
    keyring = load_keyring(tmp_path)
    secrets = {uav: keyring.secret_for(uav) for uav in ("uav-0", "uav-1", "uav-2")}
    assert len(set(secrets.values())) == 3
    master = bytes.fromhex((tmp_path / MASTER_FILE_NAME).read_text())
    assert master not in secrets.values()
    assert secrets["uav-1"] == derive_uav_secret(master, "uav-1")


def test_a_uavs_keyring_holds_its_own_secret_only_never_the_master(tmp_path):
    station = load_keyring(tmp_path)
    uav = load_keyring(tmp_path, "uav-1")
    assert uav.holder == "uav-1" and uav.uav_ids == ("uav-1",)
    assert uav.secret_for("uav-1") == station.secret_for("uav-1")
    assert uav._master is None  # what a captured UAV's process holds
    with pytest.raises(SecretError, match="this end is UAV uav-1 and holds only its own "
                                          "pre-shared secret, not uav-2's"):
        uav.secret_for("uav-2")


def test_master_from_the_environment_takes_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_ENV_VAR, "ab" * 20)
    keyring = load_keyring(tmp_path)
    assert keyring.source == f"simulation only: derived from ${MASTER_ENV_VAR}"
    assert keyring.secret_for("uav-0") == derive_uav_secret(bytes.fromhex("ab" * 20), "uav-0")
    assert not (tmp_path / MASTER_FILE_NAME).exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not hex at all, 0123456789", "is not hexadecimal text"),
        ("ab" * (MIN_SECRET_BYTES - 1), f"holds {MIN_SECRET_BYTES - 1} bytes; at least 16"),
    ],
)
def test_bad_master_is_refused_without_echoing_it(tmp_path, monkeypatch, text, message):
    monkeypatch.setenv(MASTER_ENV_VAR, text)
    with pytest.raises(SecretError, match=message) as error:
        load_keyring(tmp_path)
    assert text not in str(error.value)


def test_master_file_readable_by_others_is_refused(tmp_path):
    load_keyring(tmp_path)
    path = tmp_path / MASTER_FILE_NAME
    path.chmod(0o644)
    with pytest.raises(SecretError, match="accessible by other users .*chmod 600"):
        load_keyring(tmp_path)


def test_the_network_wide_secret_of_earlier_versions_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(LEGACY_ENV_VAR, "ab" * 20)
    with pytest.raises(SecretError, match=f"{LEGACY_ENV_VAR}.* is no longer read: every UAV "
                                          f"now has its own.*{MASTER_ENV_VAR}"):
        load_keyring(tmp_path)


def _uav_secret_in_child(folder: str, queue) -> None:
    queue.put(load_keyring(folder, "uav-4").secret_for("uav-4"))


def test_concurrent_first_use_agrees_on_one_master(tmp_path):
    # Simulated clients start together; all must end up with the same secrets.
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [
        context.Process(target=_uav_secret_in_child, args=(str(tmp_path), queue))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    values = {queue.get(timeout=30) for _ in workers}
    for worker in workers:
        worker.join(timeout=30)
    assert values == {load_keyring(tmp_path).secret_for("uav-4")}


# --- deployment: one file per UAV ------------------------------------------------------


@pytest.fixture
def provisioned(tmp_path, monkeypatch):
    """A folder with three UAVs' files, named by $QFL_QKD_SECRET_DIR."""
    folder = tmp_path / "secrets"
    folder.mkdir()
    values = {f"uav-{i}": bytes([i + 1]) * 32 for i in range(3)}
    for uav, value in values.items():
        write_secret(folder / f"qkd-secret-{uav}", value)
    monkeypatch.setenv(SECRET_DIR_ENV_VAR, str(folder))
    return folder, values


def test_base_station_holds_every_uavs_file_and_no_master(tmp_path, provisioned):
    folder, values = provisioned
    station = load_keyring(tmp_path / "cache")
    assert station.holder is None and station.uav_ids == ("uav-0", "uav-1", "uav-2")
    assert {uav: station.secret_for(uav) for uav in values} == values
    assert station.source == f"files qkd-secret-<uav-id> in {folder}"
    assert not (tmp_path / "cache" / MASTER_FILE_NAME).exists()
    with pytest.raises(SecretError, match="no pre-shared secret for uav-7 here .*qkd-secret-uav-7"):
        station.secret_for("uav-7")


def test_a_uav_reads_its_own_file_and_no_other(tmp_path, provisioned):
    folder, values = provisioned
    uav = load_keyring(tmp_path / "cache", "uav-2")
    assert uav.secret_for("uav-2") == values["uav-2"]
    assert uav.uav_ids == ("uav-2",) and uav.source == f"file {folder / 'qkd-secret-uav-2'}"
    with pytest.raises(SecretError, match="holds only its own"):
        uav.secret_for("uav-0")  # its file sits in the same folder here, unread


def test_a_uav_without_its_file_is_refused_with_the_path(tmp_path, provisioned):
    folder, _values = provisioned
    with pytest.raises(SecretError, match=f"UAV uav-5 has no pre-shared QKD secret: "
                                          f"{folder / 'qkd-secret-uav-5'} does not exist"):
        load_keyring(tmp_path, "uav-5")
    with pytest.raises(SecretError, match="cannot name a secret file"):
        load_keyring(tmp_path, "../uav-0")


def test_an_empty_secret_folder_and_an_open_file_are_refused(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(SECRET_DIR_ENV_VAR, str(empty))
    with pytest.raises(SecretError, match="no qkd-secret-<uav-id> files in .*deploy.certs"):
        load_keyring(tmp_path)
    write_secret(empty / "qkd-secret-uav-0", bytes(32), mode=0o640)
    with pytest.raises(SecretError, match="accessible by other users"):
        load_keyring(tmp_path, "uav-0")


def test_keyring_refuses_short_secrets_and_a_uav_holding_more_than_its_own():
    with pytest.raises(SecretError, match="holds 8 bytes"):
        Keyring({"uav-0": bytes(8)})
    with pytest.raises(ValueError, match="holds its own secret only"):
        Keyring({"uav-0": bytes(16), "uav-1": bytes(16)}, holder="uav-0")
    with pytest.raises(ValueError, match="holds its own secret only"):
        Keyring(master=bytes(16), holder="uav-0")
    assert "0000" not in repr(Keyring({"uav-0": bytes(16)}))
