"""SAGIN study: flat or relay-aggregated, sync or async learning over a LEO constellation.

``python -m experiments.sagin`` trains the hybrid model on the shipped topologies with real
orbits (``relay/topologies/sagin-leo-10.toml`` and ``sagin-leo-100.toml``: 12 Walker
satellites from TLEs, a HAP, UAVs of which some reach the base station only during
satellite passes, each UAV with its own local-training time), in four learning modes:

- ``flat-sync``: every UAV's update crosses its whole path, rounds of ``round_duration_s``;
- ``relays-sync``: UAVs whose paths share a relay are aggregated there (``hierarchy='relays'``);
- ``flat-async``: FedBuff on the mission clock (``mode='async'``), no relay aggregation;
- ``relays-async``: both;

over the ``ideal``, ``teleport`` and ``qkd`` channels, for several seeds. The comparison is
kept fair in updates: a synchronous round trains :data:`PER_ROUND` UAVs
(``fraction-train`` = 10 / UAVs), an asynchronous run keeps :data:`PER_ROUND` jobs in flight
(``concurrency``) and makes a version every :data:`BUFFER_SIZE` updates, for twice as many
versions as the synchronous runs have rounds. :mod:`experiments.sagin_report` writes
``report.md``: accuracy against rounds, updates and mission time, the relay bill per hop
class, messages over the space segment, staleness, mission time to a target accuracy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from experiments.grid import Cell, run_grid
from experiments.report import positive_int, study_parser
from experiments.sagin_report import write_sagin_report
from relay.shared_secret import MASTER_ENV_VAR, SECRET_DIR_ENV_VAR

STUDY = "sagin"
TOPOLOGIES = {
    10: "relay/topologies/sagin-leo-10.toml",
    100: "relay/topologies/sagin-leo-100.toml",
}
"""The federations of the study, by number of UAVs (paths relative to the project)."""
MODES = ("flat-sync", "relays-sync", "flat-async", "relays-async")
CHANNELS = ("ideal", "teleport", "qkd")
DEFAULT_SEEDS = 3
DEFAULT_ROUNDS = 8
"""Synchronous rounds; the asynchronous runs make twice as many versions."""
PER_ROUND = 10
"""UAVs a synchronous round trains, and asynchronous jobs in flight."""
BUFFER_SIZE = 5
"""Updates per asynchronous version: half a synchronous round's, hence twice the versions."""
DEFAULT_SAMPLES = 300
"""Training images per UAV (``max-samples-per-client``)."""
TEST_SAMPLES = 1000
STUDY_MASTER_SECRET = "5341474e2d73747564792d656d756c6174696f6e2d6f6e6c792d6d6173746572"
"""QKD simulation master (hex of ``SAGN-study-emulation-only-master``): it seeds the
emulated BB84 sources, so a fixed one makes the qkd cells reproducible; it protects
nothing (see :mod:`relay.shared_secret`)."""


def mode_overrides(mode: str, uavs: int, rounds: int, buffer_size: int = BUFFER_SIZE
                   ) -> dict[str, object]:
    """The run config keys that make ``mode`` for a federation of ``uavs`` UAVs.

    Parameters
    ----------
    mode : str
        One of :data:`MODES`.
    uavs : int
        UAVs in the federation.
    rounds : int
        Synchronous rounds; an asynchronous mode makes ``rounds x 10 / buffer_size``
        versions (twice as many with the default buffer).
    buffer_size : int
        Updates per asynchronous version.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    hierarchy, timing = mode.split("-")
    overrides: dict[str, object] = {"hierarchy": "relays" if hierarchy == "relays" else "none"}
    if timing == "sync":
        overrides.update({
            "mode": "sync",
            "num-server-rounds": rounds,
            "fraction-train": min(PER_ROUND, uavs) / uavs,
        })
    else:
        overrides.update({
            "mode": "async",
            "num-server-rounds": max(1, rounds * PER_ROUND // buffer_size),
            "buffer-size": buffer_size,
            "concurrency": min(PER_ROUND, uavs),
        })
    return overrides


def cells(
    uavs: Sequence[int] = tuple(TOPOLOGIES),
    modes: Sequence[str] = MODES,
    channels: Sequence[str] = CHANNELS,
    seeds: int = DEFAULT_SEEDS,
    rounds: int = DEFAULT_ROUNDS,
    samples: int = DEFAULT_SAMPLES,
    buffer_size: int = BUFFER_SIZE,
) -> list[Cell]:
    """The grid, seed by seed (a study stopped early still has whole seeds to compare).

    Parameters
    ----------
    uavs : Sequence[int]
        Federation sizes, keys of :data:`TOPOLOGIES`.
    modes, channels : Sequence[str]
        Of :data:`MODES` and :data:`CHANNELS`.
    seeds : int
        Seeds 1 .. ``seeds``.
    rounds : int
        Synchronous rounds (asynchronous versions: twice as many).
    samples : int
        Training images per UAV.
    buffer_size : int
        Updates per asynchronous version.
    """
    unknown = sorted(set(uavs) - set(TOPOLOGIES))
    if unknown:
        raise ValueError(f"no SAGIN topology for {unknown} UAVs; use {sorted(TOPOLOGIES)}")
    for channel in channels:
        if channel not in CHANNELS:
            raise ValueError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    grid = []
    for seed in range(1, seeds + 1):
        for count in uavs:
            for channel in channels:
                for mode in modes:
                    buffer = "" if buffer_size == BUFFER_SIZE or mode.endswith("-sync") \
                        else f"-k{buffer_size}"
                    grid.append(Cell(
                        name=f"uavs{count}-{mode}{buffer}-{channel}-seed{seed}",
                        overrides={
                            "model": "hybrid",
                            "relay": channel,
                            "topology": TOPOLOGIES[count],
                            "max-samples-per-client": samples,
                            "test-samples": TEST_SAMPLES,
                            "seed": seed,
                            **mode_overrides(mode, count, rounds, buffer_size),
                        },
                        labels={"uavs": count, "mode": mode, "channel": channel,
                                "seed": seed},
                        num_supernodes=count,
                    ))
    return grid


def use_study_secret() -> None:
    """Give the qkd cells (child processes) the study's QKD master, unless the caller set
    one (or per-UAV secret files) on purpose."""
    if SECRET_DIR_ENV_VAR not in os.environ:
        os.environ.setdefault(MASTER_ENV_VAR, STUDY_MASTER_SECRET)


def reproduce_command(argv: Sequence[str]) -> str:
    """The command line as given, for the report's "Reproduce" line."""
    return " ".join(["python -m experiments.sagin", *argv])


def main(argv: Sequence[str] | None = None) -> None:
    """Run the SAGIN study and write its report."""
    parser = study_parser(__doc__.splitlines()[0])
    parser.add_argument("--uavs", type=int, nargs="+", default=list(TOPOLOGIES),
                        choices=sorted(TOPOLOGIES), help="federation sizes (default: 10 100)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="learning modes (default: all four)")
    parser.add_argument("--channels", nargs="+", default=list(CHANNELS), choices=CHANNELS,
                        help="relay channels (default: ideal teleport qkd)")
    parser.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS,
                        help=f"seeds 1..N per cell (default: {DEFAULT_SEEDS})")
    parser.add_argument("--rounds", type=positive_int, default=DEFAULT_ROUNDS,
                        help=f"synchronous rounds; asynchronous runs make twice as many "
                             f"versions (default: {DEFAULT_ROUNDS})")
    parser.add_argument("--samples", type=positive_int, default=DEFAULT_SAMPLES,
                        help=f"training images per UAV (default: {DEFAULT_SAMPLES})")
    parser.add_argument("--buffer-size", type=positive_int, default=BUFFER_SIZE,
                        help=f"updates per asynchronous version; the versions make as many "
                             f"updates as the synchronous rounds (default: {BUFFER_SIZE})")
    args = parser.parse_args(argv)
    use_study_secret()
    grid = cells(args.uavs, args.modes, args.channels, args.seeds, args.rounds, args.samples,
                 args.buffer_size)
    results = run_grid(STUDY, grid, args.results_dir, rerun=args.rerun)
    given = list(argv) if argv is not None else sys.argv[1:]
    write_sagin_report(args.results_dir / STUDY, results, reproduce_command(
        [arg for arg in given if arg != "--rerun"]))


if __name__ == "__main__":
    main()
