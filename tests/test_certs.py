"""`deploy.certs`: the CA, the SuperLink certificate and SuperNode keys Flower 1.41 reads."""

from __future__ import annotations

import ipaddress
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key

from deploy.certs import QKD_SECRET_PREFIX, generate_node_keys, generate_tls_files, main
from relay.shared_secret import (
    LEGACY_ENV_VAR,
    MASTER_ENV_VAR,
    SECRET_DIR_ENV_VAR,
    SECRET_FILE_PREFIX,
    load_keyring,
)


def test_server_certificate_is_signed_by_the_ca_for_local_and_given_names(tmp_path):
    files = generate_tls_files(tmp_path, ["uav-base.example", "10.0.0.7"])
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_certificate.read_bytes())

    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "uav-base.example"}
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.7"),
    }
    for secret in (files.ca_key, files.server_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_python_ssl_accepts_the_pair_and_trusts_the_ca(tmp_path):
    files = generate_tls_files(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(files.server_certificate, files.server_key)
    client_side = ssl.create_default_context(cafile=str(files.ca_certificate))
    assert client_side.cert_store_stats()["x509_ca"] == 1


def test_node_keys_load_as_flower_loads_them(tmp_path):
    keys = generate_node_keys(tmp_path, "supernode-0")
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert keys.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    # `flwr supernode register` reads the public key with this function.
    assert try_load_public_key(keys.public_key)
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600


def test_command_line_writes_tls_files_and_node_keys(tmp_path, capsys):
    main([str(tmp_path), "--name", "superlink.local", "--supernodes", "2"])
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == [
        "ca.crt", "ca.key", "server.key", "server.pem",
        "supernode-0", "supernode-0.pub", "supernode-1", "supernode-1.pub",
    ]
    assert "SuperLink cert" in capsys.readouterr().out


def test_qkd_secrets_are_one_private_file_per_uav_that_the_relay_reads(
    tmp_path, monkeypatch, capsys
):
    main([str(tmp_path), "--supernodes", "2", "--qkd-secrets", "2", "--qkd-uav", "scout.7"])
    files = sorted(tmp_path.glob("qkd-secret-*"))
    assert [path.name for path in files] == [
        "qkd-secret-scout.7", "qkd-secret-uav-0", "qkd-secret-uav-1"
    ]
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    assert len({path.read_text() for path in files}) == 3
    assert "QKD secret (private) " in capsys.readouterr().out
    # The base station reads every file, a UAV its own; both derive the same link secret.
    assert QKD_SECRET_PREFIX == SECRET_FILE_PREFIX
    for name in (MASTER_ENV_VAR, LEGACY_ENV_VAR):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(SECRET_DIR_ENV_VAR, str(tmp_path))
    station = load_keyring(tmp_path / "cache")
    assert station.uav_ids == ("scout.7", "uav-0", "uav-1")
    uav = load_keyring(tmp_path / "cache", "uav-1")
    assert uav.secret_for("uav-1") == station.secret_for("uav-1")
    assert uav.uav_ids == ("uav-1",)


@pytest.mark.parametrize(
    "argv",
    [["--qkd-secrets", "-1"], ["--qkd-uav", "../ca"], ["--qkd-secrets", "1", "--qkd-uav", "uav-0"]],
)
def test_bad_qkd_uavs_are_refused_before_anything_is_written(tmp_path, argv):
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "certs"), *argv])
    assert stopped.value.code == 2
    assert not (tmp_path / "certs").exists()


@pytest.mark.parametrize("argv", [["--days", "0"], ["--supernodes", "-1"], ["--name", " "]])
def test_command_line_refuses_bad_values(tmp_path, argv):
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path), *argv])
    assert stopped.value.code == 2


def test_an_existing_qkd_secret_is_not_replaced_without_force(tmp_path, capsys):
    main([str(tmp_path / "a"), "--qkd-secrets", "2"])
    kept = (tmp_path / "a" / f"{QKD_SECRET_PREFIX}uav-1").read_bytes()
    fresh = tmp_path / "b"
    fresh.mkdir()
    (fresh / f"{QKD_SECRET_PREFIX}uav-1").write_bytes(kept)
    with pytest.raises(SystemExit) as stop:
        main([str(fresh), "--qkd-secrets", "2"])
    assert stop.value.code == 2
    assert f"{QKD_SECRET_PREFIX}uav-1 already exists" in capsys.readouterr().err
    assert sorted(p.name for p in fresh.iterdir()) == [f"{QKD_SECRET_PREFIX}uav-1"]
    main([str(fresh), "--qkd-secrets", "2", "--force"])
    assert (fresh / f"{QKD_SECRET_PREFIX}uav-1").read_bytes() != kept
