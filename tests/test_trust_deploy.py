"""Deployment-grade trust in the deployment tooling (issue 11).

``deploy.certs`` never replaces a key silently and refuses bad host names;
``deploy.federation`` sub-commands given missing paths answer with a message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy.certs import main as certs_main
from deploy.federation import main

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------- item 12: certs and missing paths


def test_certs_refuse_to_replace_an_existing_ca_key_unless_forced(tmp_path, capsys):
    certs_main([str(tmp_path)])
    ca_key = (tmp_path / "ca.key").read_bytes()
    (tmp_path / "server.pem").unlink()  # even a half-made folder keeps its CA key
    with pytest.raises(SystemExit) as stopped:
        certs_main([str(tmp_path), "--supernodes", "1"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'ca.key'} already exists (and 2 more); not replaced" in error
    assert "--force" in error
    assert (tmp_path / "ca.key").read_bytes() == ca_key
    assert not (tmp_path / "server.pem").exists() and not (tmp_path / "supernode-0").exists()

    certs_main([str(tmp_path), "--supernodes", "1", "--force"])
    assert (tmp_path / "ca.key").read_bytes() != ca_key
    assert (tmp_path / "supernode-0").is_file()


def test_certs_refuse_to_replace_a_supernode_key(tmp_path, capsys):
    certs_main([str(tmp_path / "a"), "--supernodes", "2"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "supernode-1.pub").write_text("registered key\n")
    with pytest.raises(SystemExit):
        certs_main([str(tmp_path / "b"), "--supernodes", "2"])
    assert f"{tmp_path / 'b' / 'supernode-1.pub'} already exists;" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["supernode-1.pub"]


@pytest.mark.parametrize("name", [
    "bad_name.example", "-uav.example", "uav-.example", "a..b", "*.example.com",
    "base station", "x" * 64 + ".example", ".".join(["abc"] * 70), "10.0.0.300",
    "base.example.", "fe80::1%eth0", "base.example/8000",
])
def test_certs_refuse_names_that_are_neither_dns_names_nor_addresses(tmp_path, capsys, name):
    with pytest.raises(SystemExit) as stopped:
        certs_main([str(tmp_path / "certs"), f"--name={name}"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"server name {name!r}" in error
    assert not (tmp_path / "certs").exists()


def test_certs_accept_dns_names_and_addresses(tmp_path):
    from cryptography import x509

    names = ["uav-1.base.example", "XN--N3H.example", "10.0.0.7", "2001:db8::1", "localhost"]
    certs_main([str(tmp_path), *[arg for name in names for arg in ("--name", name)]])
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "localhost", "uav-1.base.example", "xn--n3h.example",
    }
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "::1", "10.0.0.7", "2001:db8::1",
    }


@pytest.mark.parametrize("package", ["deploy", "server"])
def test_down_on_a_missing_folder_is_one_line_not_a_traceback(tmp_path, package):
    done = subprocess.run(
        [sys.executable, "-m", f"{package}.federation", "down", str(tmp_path / "nonexistent")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        f"[federation] error: {tmp_path / 'nonexistent'} does not exist: give the --workdir "
        "of a `python -m deploy.federation up`"
    ]


def test_down_on_a_folder_without_or_with_a_damaged_pid_file(tmp_path, capsys):
    assert main(["down", str(tmp_path)]) == 1
    assert f"{tmp_path} has no pids.json" in capsys.readouterr().out
    (tmp_path / "pids.json").write_text('[{"name": "superlink"}]')
    assert main(["down", str(tmp_path)]) == 1
    assert f"{tmp_path / 'pids.json'} is not the list of processes `up` writes" in (
        capsys.readouterr().out
    )


def test_up_with_a_work_folder_it_cannot_create_is_a_message():
    done = subprocess.run(
        [sys.executable, "-m", "deploy.federation", "up", "--workdir", "/proc/qfl-cannot-be",
         "--supernodes", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "[federation] error: " in done.stdout and "/proc/qfl-cannot-be" in done.stdout


@pytest.mark.parametrize("argv, message", [
    (["up", "--workdir", "{file}"], "--workdir {file} is not a folder"),
    (["up", "--data-dir", "{missing}"], "--data-dir {missing} is not a folder"),
    (["register", "--superlink", "127.0.0.1:9", "{missing}"],
     "public key {missing} is not a file"),
    (["submit", "--superlink", "127.0.0.1:9", "--root-certificates", "{missing}"],
     "--root-certificates {missing} is not a file"),
    (["submit", "--superlink", "127.0.0.1:9", "--app", "{missing}"],
     "--app {missing} is not the app's checkout"),
    (["register", "--superlink", "127.0.0.1:9", "--workdir", "{file}", "{file}"],
     "--workdir {file} is not a folder"),
])
def test_missing_paths_are_refused_before_anything_starts(tmp_path, capsys, argv, message):
    from deploy.arguments import parse_args

    paths = {"file": tmp_path / "a-file", "missing": tmp_path / "nonexistent"}
    paths["file"].write_text("")
    with pytest.raises(SystemExit) as stopped:
        parse_args([arg.format(**paths) for arg in argv])
    assert stopped.value.code == 2
    assert message.format(**paths) in capsys.readouterr().err
