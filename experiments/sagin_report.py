"""The SAGIN study's ``report.md`` and CSVs, every number in its text computed from the cells.

:mod:`experiments.sagin_data` turns the cells into figures per (uavs, mode, channel);
this module writes ``summary.csv``, ``hops.csv``, ``staleness.csv``, the figures and the
report, whose findings ("what each mode buys, where it costs accuracy") are sentences
built from those numbers, never typed in.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from experiments.grid import CellResult, write_csv
from experiments.report import markdown_table, mean_std, pm, write_report
from experiments.sagin_data import (
    BASELINE,
    BILL_KEYS,
    TARGET_FRACTION,
    CellFigures,
    Key,
    by_group,
    hop_rows,
    mean_hops,
    mean_total,
    plot_accuracy,
    plot_bill,
    plot_staleness,
    plot_topology_round,
    reference_channel,
    sizes_modes_channels,
    staleness_rows,
    summary_rows,
    targets,
    time_to_target,
)

Groups = Mapping[Key, list[CellFigures]]


def _minutes(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds / 60:.1f} min"


def _change(new: float, old: float) -> str:
    """``new`` against ``old`` as a signed percentage."""
    if old == 0:
        return "n/a" if new == 0 else "new"
    return f"{(new - old) / old:+.0%}".replace("-", "−")


def _big(value: float) -> str:
    return f"{value:,.0f}" if abs(value) < 1e6 else f"{value:.3g}"


def _into_bs(cells: Sequence[CellFigures]) -> float:
    """Messages over the hops that end at the base station, mean over seeds."""
    return sum(bill["messages"] for name, bill in mean_hops(cells).items()
               if name.endswith(">bs"))


def _leo_down(cells: Sequence[CellFigures]) -> float:
    """Messages over the satellite-to-base-station hops (``leo>bs``), mean over seeds."""
    return mean_hops(cells).get("leo>bs", {}).get("messages", 0.0)


# ------------------------------------------------------------------------- findings
def relay_findings(groups: Groups, size: int, channel: str) -> list[str]:
    """What aggregating at the relays buys, per timing (sync, async), with numbers."""
    lines = []
    for timing in ("sync", "async"):
        flat, relays = groups.get((size, f"flat-{timing}", channel)), \
            groups.get((size, f"relays-{timing}", channel))
        if not flat or not relays:
            continue
        space = (mean_total(relays, "space_messages"), mean_total(flat, "space_messages"))
        parts = [
            f"messages into the base station {_big(_into_bs(relays))} vs "
            f"{_big(_into_bs(flat))} ({_change(_into_bs(relays), _into_bs(flat))})",
            f"messages over the satellite-to-base-station hops {_big(_leo_down(relays))} vs "
            f"{_big(_leo_down(flat))} ({_change(_leo_down(relays), _leo_down(flat))})",
            f"messages with a satellite on their path (`space_messages`; a relay splits a "
            f"path into two messages) {_big(space[0])} vs {_big(space[1])} "
            f"({_change(*space)})",
        ]
        for bill_channel, key, what in (("teleport", "bell_pairs", "Bell pairs (teleport)"),
                                        ("qkd", "key_bits", "key bits (qkd)")):
            a, b = groups.get((size, f"relays-{timing}", bill_channel)), \
                groups.get((size, f"flat-{timing}", bill_channel))
            if a and b:
                parts.append(f"{what} {_big(mean_total(a, key))} vs {_big(mean_total(b, key))} "
                             f"({_change(mean_total(a, key), mean_total(b, key))})")
        flat_acc, relay_acc = mean_std([c.final_accuracy for c in flat]), \
            mean_std([c.final_accuracy for c in relays])
        lines.append(
            f"**relays-{timing} vs flat-{timing}, {size} UAVs** (run totals, mean of seeds): "
            + "; ".join(parts)
            + f". Final accuracy ({channel}) {relay_acc[0]:.3f} vs {flat_acc[0]:.3f} "
            f"({relay_acc[0] - flat_acc[0]:+.3f})."
        )
    return lines


def async_findings(groups: Groups, size: int, channel: str, target: float) -> list[str]:
    """What asynchrony buys on the mission clock, per hierarchy, with numbers."""
    lines = []
    for hierarchy in ("flat", "relays"):
        sync, asyn = groups.get((size, f"{hierarchy}-sync", channel)), \
            groups.get((size, f"{hierarchy}-async", channel))
        if not sync or not asyn:
            continue
        t_sync, n_sync = time_to_target(sync, target)
        t_async, n_async = time_to_target(asyn, target)
        if t_sync is not None and t_async is not None:
            speed = f" ({t_sync / t_async:.2f}x {'sooner' if t_async < t_sync else 'later'})" \
                if t_async > 0 else ""
        else:
            speed = ""
        end_sync = statistics.fmean(c.curve[-1][2] for c in sync)
        end_async = statistics.fmean(c.curve[-1][2] for c in asyn)
        both = min(end_sync, end_async)
        acc_sync = mean_std([c.final_accuracy for c in sync])
        acc_async = mean_std([c.final_accuracy for c in asyn])
        stale = [v for c in asyn for v in c.staleness]
        lines.append(
            f"**{hierarchy}-async vs {hierarchy}-sync, {size} UAVs** ({channel}): mission "
            f"time to accuracy {target:.2f} {_minutes(t_async)} ({n_async}/{len(asyn)} seeds "
            f"reach it) vs {_minutes(t_sync)} ({n_sync}/{len(sync)})"
            f"{speed}; the whole run ({mean_total(asyn, 'updates'):.0f} vs "
            f"{mean_total(sync, 'updates'):.0f} updates) takes {end_async / 60:.1f} vs "
            f"{end_sync / 60:.1f} min; final accuracy {acc_async[0]:.3f} vs {acc_sync[0]:.3f} "
            f"({acc_async[0] - acc_sync[0]:+.3f}); at the same mission time "
            f"({both / 60:.1f} min) {accuracy_at(asyn, both):.3f} vs "
            f"{accuracy_at(sync, both):.3f}"
            + (f"; mean staleness {statistics.fmean(stale):.2f} versions, "
               f"{sum(v > 0 for v in stale) / len(stale):.0%} of updates stale" if stale else "")
            + "."
        )
    return lines


def cost_findings(groups: Groups) -> list[str]:
    """Where accuracy is lost: each mode ending below flat-sync (same size and channel) by
    more than the seeds' spread (sum of the two standard deviations) and 0.005, and each
    channel ending below ideal (same size and mode) by more than 0.005."""
    below: dict[tuple[int, str], list[str]] = {}
    for (size, mode, channel), cells in groups.items():
        base = groups.get((size, "flat-sync", channel))
        if mode == "flat-sync" or not base:
            continue
        (mean, std), (ref, ref_std) = (mean_std([c.final_accuracy for c in cells]),
                                       mean_std([c.final_accuracy for c in base]))
        if mean - ref < -(std + ref_std) and mean - ref < -0.005:
            below.setdefault((size, mode), []).append(
                f"{ref - mean:.3f} over {channel} ({mean:.3f} ± {std:.3f} vs "
                f"{ref:.3f} ± {ref_std:.3f})")
    lines = [f"{mode} at {size} UAVs ends below flat-sync by " + "; ".join(parts) + "."
             for (size, mode), parts in below.items()]
    channel_costs: dict[tuple[int, str], list[str]] = {}
    for (size, mode, channel), cells in groups.items():
        ideal = groups.get((size, mode, "ideal"))
        if channel == "ideal" or not ideal:
            continue
        diff = (statistics.fmean(c.final_accuracy for c in cells)
                - statistics.fmean(c.final_accuracy for c in ideal))
        if diff < -0.005:
            channel_costs.setdefault((size, channel), []).append(f"{-diff:.3f} in {mode}")
    lines += [f"The {channel} channel at {size} UAVs ends below ideal by "
              + ", ".join(parts) + "." for (size, channel), parts in channel_costs.items()]
    return lines or ["No mode ends below flat-sync by more than the spread over seeds, and "
                     "no channel below ideal by more than 0.005."]


def accuracy_at(cells: Sequence[CellFigures], time_s: float) -> float:
    """Mean over seeds of the accuracy of the last row recorded by mission time ``time_s``."""
    return statistics.fmean(
        [accuracy for _r, accuracy, t, _u in cell.curve if t <= time_s + 1e-9][-1]
        for cell in cells)


# --------------------------------------------------------------------------- tables
def accuracy_table(groups: Groups) -> str:
    """Final accuracy per (uavs, mode) and channel, with updates and mission time."""
    sizes, modes, channels = sizes_modes_channels(groups)
    ref = reference_channel(channels)
    rows = []
    for size in sizes:
        for mode in modes:
            ref_cells = groups.get((size, mode, ref))
            if not ref_cells:
                continue
            rows.append([size, mode]
                        + [pm([c.final_accuracy for c in groups[(size, mode, ch)]])
                           if (size, mode, ch) in groups else "-" for ch in channels]
                        + [f"{mean_total(ref_cells, 'updates'):.0f}",
                           f"{statistics.fmean(c.curve[-1][2] for c in ref_cells) / 60:.1f}"])
    return markdown_table(["UAVs", "mode", *channels, f"updates ({ref})",
                           f"mission min ({ref})"], rows)


def target_table(groups: Groups) -> str:
    """Mission time to each size's target accuracy, per mode (reference channel)."""
    sizes, modes, channels = sizes_modes_channels(groups)
    ref, goal = reference_channel(channels), targets(groups)
    rows = []
    for size in sizes:
        for mode in modes:
            cells = groups.get((size, mode, ref))
            if cells:
                seconds, reached = time_to_target(cells, goal[size])
                rows.append([size, mode, f"{goal[size]:.2f}", _minutes(seconds),
                             f"{reached}/{len(cells)}"])
    return markdown_table(["UAVs", "mode", "target accuracy", "mission time to it (mean)",
                           "seeds reaching it"], rows)


def totals_table(groups: Groups) -> str:
    """Run totals per (uavs, mode): messages, space segment, Bell pairs, key bits."""
    sizes, modes, channels = sizes_modes_channels(groups)
    ref = reference_channel(channels)
    rows = []
    for size in sizes:
        for mode in modes:
            cells = groups.get((size, mode, ref))
            tele, qkd = groups.get((size, mode, "teleport")), groups.get((size, mode, "qkd"))
            if not cells:
                continue
            updates = max(mean_total(cells, "updates"), 1.0)
            rows.append([
                size, mode, _big(mean_total(cells, "messages")), _big(_into_bs(cells)),
                _big(_leo_down(cells)), _big(mean_total(cells, "space_messages")),
                _big(mean_total(tele, "bell_pairs")) if tele else "-",
                _big(mean_total(tele, "bell_pairs") / updates) if tele else "-",
                _big(mean_total(tele, "classical_bits")) if tele else "-",
                _big(mean_total(qkd, "key_bits")) if qkd else "-",
                f"{mean_total(qkd, 'keys_aborted'):.1f}" if qkd else "-",
            ])
    return markdown_table(["UAVs", "mode", "hop messages", "into bs", "leo>bs",
                           "space messages",
                           "Bell pairs (teleport)", "Bell pairs per update",
                           "classical bits (teleport)", "key bits (qkd)", "keys aborted (qkd)"],
                          rows)


def hop_table(groups: Groups, size: int) -> str:
    """Per hop class and mode: messages / Bell pairs (teleport) / key bits (qkd)."""
    _sizes, modes, channels = sizes_modes_channels(groups)
    ref = reference_channel(channels)
    present = [m for m in modes if (size, m, ref) in groups]
    bills = {m: {ch: mean_hops(groups.get((size, m, ch), [])) for ch in (ref, "teleport", "qkd")
                 if (size, m, ch) in groups} for m in present}
    classes = sorted({name for by_channel in bills.values() for bill in by_channel.values()
                      for name in bill})
    rows = []
    for name in classes:
        row: list[str] = [name]
        for mode in present:
            got = bills[mode]
            parts = [_big(got[ref].get(name, {}).get("messages", 0.0))]
            parts.append(_big(got["teleport"].get(name, {}).get("bell_pairs", 0.0))
                         if "teleport" in got else "-")
            parts.append(_big(got["qkd"].get(name, {}).get("key_bits", 0.0))
                         if "qkd" in got else "-")
            row.append(" / ".join(parts))
        rows.append(row)
    return markdown_table(["hop class", *present], rows)


def staleness_table(groups: Groups) -> str:
    """Staleness per asynchronous (uavs, mode), pooled over channels and seeds."""
    sizes, modes, _channels = sizes_modes_channels(groups)
    rows = []
    for size in sizes:
        for mode in modes:
            stale = [v for (n, m, _ch), cells in groups.items() if n == size and m == mode
                     for c in cells for v in c.staleness]
            if stale:
                ordered = sorted(stale)
                rows.append([size, mode, len(stale), f"{statistics.fmean(stale):.2f}",
                             ordered[len(ordered) // 2],
                             ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
                             max(stale), f"{sum(v > 0 for v in stale) / len(stale):.0%}"])
    return markdown_table(["UAVs", "mode", "updates", "mean", "median", "90th pct", "max",
                           "stale (> 0)"], rows)


# ------------------------------------------------------------------------- the text
def report_text(groups: Groups, results: Sequence[CellResult], command: str,
                has_staleness: bool, drawn: Mapping[int, int] | None = None) -> str:
    """The whole ``report.md``."""
    sizes, modes, channels = sizes_modes_channels(groups)
    ref, goal = reference_channel(channels), targets(groups)
    first = results[0].cell.overrides
    seeds = sorted({r.cell.labels["seed"] for r in results})
    sync_rounds = sorted({r.cell.overrides["num-server-rounds"] for r in results
                          if r.cell.overrides.get("mode") != "async"})
    async_versions = sorted({r.cell.overrides["num-server-rounds"] for r in results
                             if r.cell.overrides.get("mode") == "async"})
    buffers = ", ".join(map(str, sorted({r.cell.overrides["buffer-size"] for r in results
                                         if r.cell.overrides.get("mode") == "async"}))) or "-"
    minutes = sum(r.wall_seconds for r in results) / 60
    loads = [r.record.get("load_average_start", [None])[0] for r in results if r.record]
    loads = [value for value in loads if value is not None]
    machine: dict = next((r.record["machine"] for r in results if r.record.get("machine")), {})
    findings = []
    for size in sizes:
        findings += relay_findings(groups, size, ref)
        findings += async_findings(groups, size, ref, goal[size])
    latency = [mean_total(cells, "hop_latency_s") for (_n, _m, ch), cells in groups.items()
               if ch == "teleport"]
    latency_text = (
        f" It does not count the channel's own emulated latency either, whose median per "
        f"message and hop over the teleport cells is {statistics.fmean(latency):,.0f} s "
        f"(teleporting every parameter `shots` times), against rounds of 120 s."
        if latency else "")
    figure = f"Made by `{command}`."
    accuracy_figures = "\n\n".join(
        f"![accuracy, {size} UAVs](accuracy-uavs{size}.png)\n\n{figure} Mean over seeds; "
        f"solid: ideal channel, dashed: teleport." for size in sizes)
    seed = min(r.cell.labels["seed"] for r in results)
    topology_figures = "\n\n".join(
        f"**{size} UAVs**, round {(drawn or {}).get(size, 1)}:\n\n"
        f"![topology, {size} UAVs](topology-uavs{size}.png)" for size in sizes)
    topology_text = (
        f"Where the paths meet: each topology in seed {seed}'s first round with a path "
        "through a satellite (as the cells' `topology.png` show their first round), every "
        "hop a path uses coloured by its fidelity. A HAP or satellite that several paths "
        f"share is where `hierarchy='relays'` aggregates.\n\n{topology_figures}")
    hop_tables = "\n\n".join(f"**{size} UAVs** (messages / Bell pairs, teleport / key bits, "
                             f"qkd; run totals, mean of seeds)\n\n{hop_table(groups, size)}"
                             for size in sizes)
    staleness = ("Pooled over channels and seeds: versions between the one a UAV trained on "
                 f"and the one its update went into.\n\n{staleness_table(groups)}\n\n"
                 f"![staleness](staleness.png)\n\n{figure}"
                 if has_staleness else "No asynchronous cells.")
    return f"""# SAGIN study: flat or relay-aggregated, synchronous or asynchronous learning

Reproduce: `{command}` ({len(results)} cells, {minutes:.0f} min of wall time here on
{machine.get('cores', '?')} cores ({machine.get('cpu', 'unknown CPU')}), load average at the
start of a cell {min(loads, default=0):.1f} to {max(loads, default=0):.1f}).

Hybrid model, {first.get('max-samples-per-client')} training images per UAV (Dirichlet
partitions), {first.get('test-samples')} test images, seeds {', '.join(map(str, seeds))};
topologies `relay/topologies/sagin-leo-10.toml` and `sagin-leo-100.toml` (12 Walker
satellites from TLEs, a HAP, UAVs of which the far ones reach the base station only
through a satellite pass; each UAV's local-training time `train_s`, 20-110 s, is an
assumed compute model). Modes: {', '.join(modes)}; channels: {', '.join(channels)};
{', '.join(map(str, sizes))} UAVs. A synchronous round ({', '.join(map(str, sync_rounds)) or '-'}
rounds of 120 s of mission time) trains 10 UAVs (`fraction-train` 10/UAVs); an asynchronous
run (`mode='async'`, {', '.join(map(str, async_versions)) or '-'} versions) keeps 10 jobs in
flight (`concurrency` 10) and makes a version every {buffers} updates (`buffer-size`
{buffers}), so both aggregate about the same number of updates. Accuracy and timing are
compared on the `{ref}` channel unless said otherwise.

## What each mode buys, and where it costs accuracy

{chr(10).join(f'- {line}' for line in findings) or '- (needs both modes of a pair)'}

Where accuracy is lost:

{chr(10).join(f'- {line}' for line in cost_findings(groups))}

## Final accuracy (mean ± std over seeds)

{accuracy_table(groups)}

{accuracy_figures}

## Mission time to a target accuracy

Target per size: {TARGET_FRACTION:.0%} of {BASELINE}'s final mean accuracy ({ref}; the best
mode's if {BASELINE} did not run), rounded down to 0.01. Synchronous rows are recorded at
the end of each 120 s round; asynchronous ones at the mission time of each aggregation.

{target_table(groups)}

## The relay's bill

Run totals, mean over seeds. "hop messages" counts a message once per hop it crossed,
"into bs" the hops that end at the base station, "leo>bs" the satellite-to-base-station
hops, "space messages" the messages that crossed a hop with a LEO satellite at one end
(a relay that aggregates splits a path into two messages, both counted).

{totals_table(groups)}

{topology_text}

Per hop class (a hop named by its ends' layers: uav, hap, leo, bs):

{hop_tables}

![bill per hop class](bill.png)

{figure}

## Staleness of the asynchronous updates

{staleness}

## Caveats

- The mission clock counts each UAV's training (`train_s`) and the wait for a contact
  (asynchronous), or a 120 s mobility step per round (synchronous; longer only if its
  slowest UAV trains longer, which no UAV here does).{latency_text}
- An asynchronous version applies the mean step of its buffer at full size (no server
  step size), so a smaller buffer moves the model more often by noisier steps.
- Data: `summary.csv` (per size, mode and channel), `hops.csv` (bill per hop class),
  `staleness.csv`, `rounds.csv`, `cells.csv`, `runs/<cell>/metrics.json`.
"""


def write_sagin_report(study_dir: Path, results: Sequence[CellResult], command: str) -> None:
    """CSVs, figures and ``report.md`` of the SAGIN study."""
    groups = by_group(results)
    summary = summary_rows(groups)
    write_csv(study_dir / "summary.csv", list(summary[0]), summary)
    write_csv(study_dir / "hops.csv", ["uavs", "mode", "channel", "hop_class", *BILL_KEYS],
              hop_rows(groups))
    write_csv(study_dir / "staleness.csv", ["uavs", "mode", "channel", "staleness", "updates"],
              staleness_rows(groups))
    sizes, _modes, _channels = sizes_modes_channels(groups)
    for size in sizes:
        plot_accuracy(groups, size, study_dir / f"accuracy-uavs{size}.png")
    plot_bill(groups, study_dir / "bill.png")
    seed = min(r.cell.labels["seed"] for r in results)
    drawn = {}
    for size in sizes:
        topology = next(r.cell.overrides["topology"] for r in results
                        if r.cell.labels["uavs"] == size)
        drawn[size] = plot_topology_round(topology, seed,
                                          study_dir / f"topology-uavs{size}.png")
    has_staleness = plot_staleness(groups, study_dir / "staleness.png")
    write_report(study_dir, report_text(groups, results, command, has_staleness, drawn))
