"""The command line of ``python -m deploy.federation``: its sub-commands and their checks.

``up`` and ``down`` manage a local federation; ``register`` and ``submit`` talk to a
SuperLink started elsewhere (``docker/compose.yml``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from deploy.ports import PROJECT_ROOT, RESERVED_PORTS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check ``argv`` (``sys.argv[1:]`` when None); exits 2 on a bad value."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.federation",
        description="Start a local deployment federation (1 SuperLink, N SuperNodes), "
        "run the app once with flwr run, and stop everything.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_up(commands)
    down = commands.add_parser("down", help="stop what an interrupted `up` left running")
    down.add_argument("workdir", type=Path)
    _add_remote(commands)
    args = parser.parse_args(argv)
    _check_paths(parser, args)
    if args.command in ("register", "submit"):
        _check_remote(parser, args)
    if args.command == "up":
        _check_up(parser, args)
    return args


def _add_up(commands: argparse._SubParsersAction) -> None:
    up = commands.add_parser("up", help="start, run once, stop")
    up.add_argument("--supernodes", type=int, default=3, help="SuperNodes (UAVs), default 3")
    security = up.add_mutually_exclusive_group()
    security.add_argument("--tls", action="store_true", help="TLS (the default)")
    security.add_argument(
        "--insecure", action="store_true", help="no TLS: plain HTTP on 127.0.0.1"
    )
    up.add_argument(
        "--auth", action="store_true",
        help="SuperNode authentication: generate and register one key per SuperNode",
    )
    up.add_argument("--rounds", type=int, help="num-server-rounds (shortcut)")
    up.add_argument("--run-config", default="", help='run config overrides, "k1=v1 k2=v2"')
    up.add_argument(
        "--data-dir", help="node config data-dir for every SuperNode (an existing folder)"
    )
    up.add_argument("--workdir", type=Path, help="work folder (default: a new temporary one)")
    up.add_argument("--port", type=int, default=0, help="SuperLink port (default: a free one)")
    up.add_argument("--timeout", type=float, default=3600.0, help="seconds before giving up")
    up.add_argument("--keep", action="store_true", help="keep a temporary work folder")
    up.add_argument(
        "--cold-clientapps", action="store_true",
        help="Flower's own fresh flwr-clientapp process per message, instead of ClientApps "
        "forked warm by python -m deploy.warm",
    )
    up.add_argument(
        "--kill-supernode", type=int, metavar="INDEX",
        help="fault injection: SIGKILL SuperNode INDEX (and its ClientApp) once the round "
        "given by --kill-after-round has ended; the run must go on without it",
    )
    up.add_argument(
        "--kill-after-round", type=int, default=1, metavar="ROUND",
        help="the round after which --kill-supernode strikes (default 1)",
    )


def _add_remote(commands: argparse._SubParsersAction) -> None:
    # A SuperLink started elsewhere (docker/compose.yml): register keys, or submit a run.
    register = commands.add_parser(
        "register", help="register SuperNode public keys with a running SuperLink"
    )
    submit = commands.add_parser(
        "submit", help="wait for N SuperNodes on a running SuperLink, run the app once"
    )
    for remote in (register, submit):
        remote.add_argument(
            "--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address"
        )
        trust = remote.add_mutually_exclusive_group()
        trust.add_argument(
            "--root-certificates", type=Path, help="CA certificate of the SuperLink (TLS)"
        )
        trust.add_argument("--insecure", action="store_true", help="no TLS: plain HTTP")
        remote.add_argument("--workdir", type=Path, help="work folder (default: a temporary one)")
        remote.add_argument(
            "--timeout", type=float, default=3600.0, help="seconds before giving up"
        )
    register.add_argument("public_keys", type=Path, nargs="+", help="OpenSSH public key files")
    submit.add_argument("--supernodes", type=int, default=3, help="SuperNodes to wait for")
    submit.add_argument("--rounds", type=int, help="num-server-rounds (shortcut)")
    submit.add_argument("--run-config", default="", help='run config overrides, "k1=v1 k2=v2"')
    submit.add_argument(
        "--app", type=Path, default=PROJECT_ROOT, help="the app's checkout (default: this one)"
    )


def _check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Paths that must exist do, before anything starts (``down`` checks its own)."""
    workdir = getattr(args, "workdir", None)
    if args.command != "down" and workdir is not None and workdir.exists() \
            and not workdir.is_dir():
        parser.error(f"--workdir {workdir} is not a folder")
    if getattr(args, "data_dir", None):
        # Resolved here: the SuperNodes run in the project's folder, not the caller's.
        data_dir = Path(args.data_dir).resolve()
        if not data_dir.is_dir():
            parser.error(f"--data-dir {args.data_dir} is not a folder")
        args.data_dir = str(data_dir)
    certificates = getattr(args, "root_certificates", None)
    if certificates is not None and not certificates.is_file():
        parser.error(f"--root-certificates {certificates} is not a file")
    for key in getattr(args, "public_keys", []):
        if not key.is_file():
            parser.error(f"public key {key} is not a file")
    app = getattr(args, "app", None)
    if app is not None and not (app / "pyproject.toml").is_file():
        parser.error(f"--app {app} is not the app's checkout (it has no pyproject.toml)")


def _check_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.supernodes < 1:
        parser.error(f"--supernodes {args.supernodes} is not allowed; use 1 or more")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds {args.rounds} is not allowed; use 1 or more")


def _check_remote(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    host, _, port = args.superlink.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        parser.error(f"--superlink {args.superlink!r} is not allowed; use HOST:PORT")
    args.superlink_host, args.superlink_port = host.strip("[]"), int(port)
    if args.command == "submit":
        _check_counts(parser, args)


def _check_up(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    _check_counts(parser, args)
    if args.auth and args.insecure:
        parser.error("--auth needs TLS; drop --insecure")
    if args.kill_supernode is not None and not 0 <= args.kill_supernode < args.supernodes:
        parser.error(
            f"--kill-supernode {args.kill_supernode} is not allowed; use 0 to "
            f"{args.supernodes - 1} (one of the --supernodes {args.supernodes})"
        )
    if args.kill_after_round < 0:
        parser.error(
            f"--kill-after-round {args.kill_after_round} is not allowed; use 0 or more"
        )
    if args.port and (args.port in RESERVED_PORTS or not 1024 <= args.port <= 65535):
        parser.error(f"--port {args.port} is not allowed; use 1024..65535 except 39091-39093")
