"""Deployment-grade trust in the deployment tooling (issue 11, items 2, 6 and 12).

- A SuperNode that dies during a run is a failed client, not a failed federation; the
  SuperLink, its SuperExec, or the last SuperNode dying still stops everything.
- ``up``'s output check: a run whose every round was skipped is not a success.
- ``deploy.certs`` never replaces a key silently and refuses bad host names;
  ``deploy.federation`` sub-commands given missing paths answer with a message.

The quick tests supervise stand-in processes (``sleep``), never Flower's; the slow one
starts a real federation and kills a SuperNode's process tree from outside mid-round.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.certs import main as certs_main
from deploy.federation import LocalFederation, main
from deploy.outputs import check_run_outputs
from deploy.processes import FederationError, ManagedProcess, ProcessRef, spawn

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    return children


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, found through /proc."""
    children, found, queue = _proc_children(), [], [pid]
    while queue:
        found.append(current := queue.pop())
        queue.extend(children.get(current, []))
    return found


def _alive(pid: int) -> bool:
    ref = ProcessRef.of(pid, "checked")
    return ref is not None and ref.running()  # neither gone nor a zombie


def _with_flwr_home(flwr_home: Path) -> list[int]:
    """Live processes that inherited this FLWR_HOME (what a federation started)."""
    marker, found = f"FLWR_HOME={flwr_home}".encode(), []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if marker in environ.split(b"\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def stand_ins(tmp_path):
    """A LocalFederation whose 'SuperLink' and 'SuperNodes' are shell stand-ins."""
    notes: list[str] = []
    fed = LocalFederation(tmp_path / "fed", tls=False, notify=notes.append)
    fed.logs_dir.mkdir(parents=True)

    def start(name: str, script: str) -> ManagedProcess:
        process = spawn(name, ["bash", "-c", script], cwd=tmp_path, env=os.environ,
                        log_path=fed.logs_dir / f"{name}.log")
        fed.processes.append(process)
        return process

    yield fed, start, notes
    every = [pid for p in fed.processes for pid in _tree(p.ref.pid)]
    assert fed.stop() == []
    assert [pid for pid in every if _alive(pid)] == []


# ------------------------------------------------------- item 2: a UAV that dies is a failed client


def test_supernode_killed_during_the_run_is_recorded_and_the_federation_goes_on(stand_ins):
    fed, start, notes = stand_ins
    start("superlink", "sleep 300")
    start("supernode-0", "sleep 300")
    node = start("supernode-1", "sleep 300 & wait")  # a SuperNode with a child (its app)
    _wait(lambda: len(_tree(node.ref.pid)) == 2)
    fed.check_alive(running=True)  # sees the trees while all live
    child = _tree(node.ref.pid)[1]

    os.kill(node.ref.pid, signal.SIGKILL)  # the SuperNode only: its child is orphaned
    _wait(lambda: node.exit_code() is not None)
    fed.check_alive(running=True)  # no error: the run goes on with supernode-0

    assert fed.lost == {"supernode-1": "was killed by signal 9 (SIGKILL)"}
    assert len(notes) == 1 and notes[0].startswith(
        f"supernode-1 (pid {node.ref.pid}) was killed by signal 9 (SIGKILL); "
        "the run goes on without it"
    )
    assert "stopped 1 process(es) it left" in notes[0]
    assert not _alive(child)
    fed.check_alive(running=True)  # said once
    assert len(notes) == 1


def test_supernode_that_exits_before_the_run_still_stops_the_start(stand_ins):
    fed, start, _notes = stand_ins
    start("superlink", "sleep 300")
    node = start("supernode-0", "echo cannot connect; exit 3")
    _wait(lambda: node.exit_code() is not None)
    with pytest.raises(FederationError, match=r"supernode-0 \(pid \d+, a SuperNode\) exited "
                       r"with code 3; last lines of .*\ncannot connect"):
        fed.check_alive()


def test_superlink_death_stops_everything_with_how_it_died(stand_ins):
    fed, start, _notes = stand_ins
    superlink = start("superlink", "sleep 300")
    start("supernode-0", "sleep 300")
    os.kill(superlink.ref.pid, signal.SIGKILL)
    _wait(lambda: superlink.exit_code() is not None)
    with pytest.raises(FederationError, match=r"^superlink \(pid \d+, the SuperLink\) was "
                       r"killed by signal 9 \(SIGKILL\)"):
        fed.check_alive(running=True)


def test_superexec_death_stops_everything(stand_ins):
    fed, start, _notes = stand_ins
    # Flower's SuperLink starts its SuperExec (which starts the ServerApp) as a child.
    superlink = start("superlink", "(exec -a flower-superexec sleep 300) & sleep 300")
    start("supernode-0", "sleep 300")
    _wait(lambda: len(_tree(superlink.ref.pid)) == 3)
    fed.check_alive(running=True)
    [superexec] = [pid for pid in _tree(superlink.ref.pid)
                   if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"flower-superexec")]
    os.kill(superexec, signal.SIGKILL)
    _wait(lambda: not _alive(superexec))
    with pytest.raises(FederationError, match=rf"SuperExec \(pid {superexec}\), which starts "
                       "the ServerApp, has exited"):
        fed.check_alive(running=True)


def test_last_supernode_gone_stops_everything(stand_ins):
    fed, start, _notes = stand_ins
    start("superlink", "sleep 300")
    nodes = [start(f"supernode-{i}", "sleep 300") for i in range(2)]
    fed.kill("supernode-0")  # fault injection
    nodes[1].popen.send_signal(signal.SIGTERM)
    _wait(lambda: all(node.exit_code() is not None for node in nodes))
    with pytest.raises(FederationError, match=r"every SuperNode has exited \(supernode-0 killed "
                       r"on purpose, supernode-1 was killed by signal 15 \(SIGTERM\)\): no UAV"):
        fed.check_alive(running=True)


@pytest.mark.slow
def test_supernode_tree_killed_from_outside_mid_round_leaves_a_run_of_the_survivors(tmp_path):
    """``kill -9`` of one SuperNode's whole process tree while it holds a train message."""
    workdir, out = tmp_path / "federation", tmp_path / "out"
    up_log = tmp_path / "up.log"
    started = time.monotonic()
    with up_log.open("w") as sink:
        up = subprocess.Popen(
            [
                sys.executable, "-m", "deploy.federation", "up", "--supernodes", "3",
                "--rounds", "2", "--workdir", str(workdir), "--timeout", "500",
                "--run-config",
                f"min-train-nodes=2 model='classical' max-samples-per-client=50 "
                f"test-samples=200 output-dir='{out}' run-name='outside-kill'",
            ],
            cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
    node_log = workdir / "logs" / "supernode-2.log"
    killed: list[int] = []
    try:
        while up.poll() is None and not killed:
            assert time.monotonic() - started < 400, up_log.read_text()[-3000:]
            text = node_log.read_text(errors="replace") if node_log.exists() else ""
            if "Receiving: train message" in text:
                # Mid-round: the node took its train message and has not replied.
                assert "Sending: train message" not in text
                entry = next(e for e in json.loads((workdir / "pids.json").read_text())
                             if e["name"] == "supernode-2")
                killed = _tree(entry["pid"])
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        up.wait(timeout=500)
    finally:
        if up.poll() is None:  # stop what this test started, then what it left
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=120)
            main(["down", str(workdir)])
    log = up_log.read_text()
    assert killed, log[-4000:]
    assert up.returncode == 0, log[-4000:]
    assert f"supernode-2 (pid {killed[0]}) was killed by signal 9 (SIGKILL); the run goes " \
           "on without it" in log
    assert "finished:completed" in log and "Run outside-kill finished" in log

    rows = json.loads((out / "outside-kill" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2]
    # Round 1 lost the node it held a message for, and aggregated the two survivors.
    assert (rows[1]["clients_used"], rows[1]["clients_failed"]) == (2, 1)
    [reason] = rows[1]["failed_reasons"].values()
    assert "Node Unavailable" in reason
    assert (rows[2]["clients_used"], rows[2]["clients_failed"]) == (2, 0)
    assert "rounds: 2 of 2 aggregated, 0 skipped; updates: 4 used, 0 rejected, 1 failed" in log
    assert check_run_outputs(out / "outside-kill") == []
    assert [pid for pid in killed if _alive(pid)] == []
    assert _with_flwr_home(workdir.resolve() / "flwr-home") == []


# ------------------------------------------------------- item 6: a run that trained nothing


def _folder(path: Path, trained: list[tuple[int, int, int, str | None]]) -> Path:
    """A finished run folder; ``trained`` rows are (used, rejected, failed, skipped)."""
    path.mkdir(parents=True)
    rows = [{"round": 0, "clients_sampled": 0, "clients_used": 0, "clients_rejected": 0,
             "clients_failed": 0, "failed_reasons": {}, "skipped": None}]
    for number, (used, rejected, failed, skipped) in enumerate(trained, start=1):
        rows.append({
            "round": number, "clients_sampled": used + rejected + failed, "clients_used": used,
            "clients_rejected": rejected, "clients_failed": failed, "skipped": skipped,
            "failed_reasons": {str(n): "Node Unavailable" for n in range(failed)},
            "rejected_reasons": {str(n): "weight" for n in range(rejected)},
        })
    config = {"run_config": {"num-server-rounds": len(trained)}}
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.json").write_text(json.dumps(rows))
    (path / "final_model.pt").write_bytes(b"")
    return path


def test_a_run_whose_every_round_was_skipped_is_not_a_success(tmp_path):
    from deploy.outputs import run_summary

    skipped = "1 update(s) accepted, 2 needed (min-train-nodes)"
    # Every update rejected or too few accepted: no node failed, yet nothing was trained.
    dead = _folder(tmp_path / "dead", [(0, 3, 0, "0 update(s) accepted, 2 needed"),
                                       (1, 2, 0, skipped)])
    assert check_run_outputs(dead) == [
        "every round was skipped (2 of 2): no update was aggregated, the model is the "
        "initial one (0 update(s) accepted, 2 needed; 1 update(s) accepted, 2 needed "
        "(min-train-nodes))"
    ]
    assert run_summary(dead) == (
        "rounds: 0 of 2 aggregated, 2 skipped (round 1, 2); updates: 1 used, 5 rejected, "
        "0 failed"
    )
    # A skipped round among aggregated ones is the skip rule at work: a success, counted.
    some = _folder(tmp_path / "some", [(3, 0, 0, None), (1, 1, 1, skipped), (2, 1, 0, None)])
    assert check_run_outputs(some) == []
    assert run_summary(some) == (
        "rounds: 2 of 3 aggregated, 1 skipped (round 2); updates: 6 used, 2 rejected, 1 failed"
    )


class _FakeFederation:
    """What ``up``'s run step uses of a LocalFederation, with a scripted run."""

    def __init__(self, tmp_path: Path, run_dir: Path | None, status: str, details: str = ""):
        self.run_dir, self.status, self.logs_dir = run_dir, status, tmp_path / "logs"
        self.status_details = {7: details} if details else {}

    def kill(self, name: str) -> list:
        raise AssertionError(f"nothing to kill ({name})")

    def run(self, run_config, output=None, timeout=0.0, on_line=None):
        if self.run_dir is not None and on_line is not None:
            on_line(f"INFO : Run x: outputs in {self.run_dir}\n")
        return 7, self.status


def _up_args() -> argparse.Namespace:
    return argparse.Namespace(supernodes=3, kill_supernode=None, kill_after_round=1,
                              run_config="", rounds=None, timeout=60.0)


def test_up_exits_non_zero_with_a_message_when_every_round_was_skipped(tmp_path, capsys):
    from deploy.federation import _run_once

    dead = _folder(tmp_path / "dead", [(0, 3, 0, "0 update(s) accepted, 2 needed")])
    assert _run_once(_FakeFederation(tmp_path, dead, "finished:completed"), _up_args()) == 1
    out = capsys.readouterr().out
    assert "[federation] rounds: 0 of 1 aggregated, 1 skipped (round 1)" in out
    assert "[federation] run incomplete: every round was skipped (1 of 1)" in out

    fine = _folder(tmp_path / "fine", [(3, 0, 0, None)])
    assert _run_once(_FakeFederation(tmp_path, fine, "finished:completed"), _up_args()) == 0
    assert "run incomplete" not in capsys.readouterr().out


def test_up_names_why_flower_failed_the_run_when_the_serverapp_died(tmp_path, capsys):
    from deploy.federation import _run_once

    fake = _FakeFederation(tmp_path, None, "finished:failed",
                           details="No heartbeat received from the task")
    assert _run_once(fake, _up_args()) == 1
    out = capsys.readouterr().out
    assert "run 7: finished:failed (No heartbeat received from the task)" in out
    assert f"run failed: Flower reports finished:failed; the ServerApp's log is in " \
           f"{tmp_path / 'logs' / 'run.log'}" in out


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
