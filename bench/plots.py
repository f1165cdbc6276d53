"""PNG plots of the benchmark results for docs/benchmarks.md (reads bench/results/*.json only).

    .venv/bin/pip install -e '.[bench]'     # matplotlib
    .venv/bin/python bench/plots.py [--results bench/results] [--out docs/img]

Nothing is measured here: run the benchmarks first (see docs/benchmarks.md). A missing result
file skips its plot with a note; quick (`--quick`) results are used only where noted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parent.parent
GEARCTL = "#1f77b4"
PLAIN = "#d62728"
CEILING = "#7f7f7f"

Result = dict[str, Any]


def load(results: Path, name: str) -> Result | None:
    try:
        return json.loads((results / f"{name}.json").read_text())
    except FileNotFoundError:
        return None


def machine_note(result: Result) -> str:
    m = result.get("machine", {})
    return (
        f"{m.get('nproc', '?')} cores ({m.get('cpu', '?')}), {m.get('memory_mb', 0) // 1024} GB,"
        f" Python {m.get('python', '?')}; run {result.get('when', '?')[:16]}"
    )


def finish(fig: Figure, result: Result, path: Path) -> Path:
    fig.text(0.01, 0.01, machine_note(result), fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def restore_throughput(results: Path, out: Path) -> Path | None:
    """Restore jobs/s against the number of jobs in the store, with gearmand's submit ceiling."""
    data = load(results, "restore_throughput")
    if data is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    runs = data["runs"]
    ax.scatter(
        [r["jobs"] for r in runs],
        [r["submit_rate"] for r in runs],
        marker="_",
        s=300,
        color=CEILING,
        label="submit ceiling (gearmand -q libmemcached), each run",
    )
    ax.scatter(
        [r["jobs"] for r in runs],
        [r["restore_rate"] for r in runs],
        color=GEARCTL,
        alpha=0.6,
        label="restore (restore_throughput.py), each run",
    )
    summary = data["summary"]
    ax.plot(
        [s["jobs"] for s in summary],
        [s["restore_rate_median"] for s in summary],
        color=GEARCTL,
        linewidth=2,
        label="restore, median",
    )
    fraction = load(results, "recovered_fraction")
    if fraction is not None:
        sizes, rates = [], []
        for r in fraction["results"]:
            restore_s = r["gearctl_seconds"] - r["gearctl_gearmand_start_s"]
            sizes.append(r["jobs"])
            rates.append(r["gearctl_recovered"] / restore_s)
        ax.plot(
            sizes,
            rates,
            "s--",
            color="#2ca02c",
            label="restore in recovered_fraction.py (one run each)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("jobs in the store")
    ax.set_ylabel("jobs per second")
    ax.set_ylim(bottom=0)
    ax.set_title("Restore throughput vs. store size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return finish(fig, data, out / "restore_throughput.png")


def recovered_fraction(results: Path, out: Path) -> Path | None:
    """Share of the jobs back after kill -9: plain gearmand's replay vs. gearctl's restore."""
    data = load(results, "recovered_fraction")
    if data is None:
        return None
    rows = data["results"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    positions = range(len(rows))
    width = 0.38
    renamed = [
        (r["plain_queue"].get("img", 0) + r["plain_queue"].get("search", 0)) / r["jobs"]
        for r in rows
    ]
    right = [r["plain_fraction"] - w for r, w in zip(rows, renamed, strict=True)]
    left = [p - width / 2 for p in positions]
    ax.bar(left, right, width, color=PLAIN, label="plain gearmand: under the right name")
    ax.bar(
        left,
        renamed,
        width,
        bottom=right,
        color=PLAIN,
        alpha=0.35,
        hatch="//",
        label="plain gearmand: renamed (img-resize as img, ...)",
    )
    ax.bar(
        [p + width / 2 for p in positions],
        [r["gearctl_fraction"] for r in rows],
        width,
        color=GEARCTL,
        label="gearctl restore",
    )
    for p, r in zip(positions, rows, strict=True):
        ax.text(
            p - width / 2,
            r["plain_fraction"] + 0.01,
            f"{r['plain_fraction']:.0%}",
            ha="center",
            fontsize=8,
        )
        ax.text(
            p + width / 2,
            r["gearctl_fraction"] + 0.01,
            f"{r['gearctl_fraction']:.0%}",
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(list(positions), [f"{r['jobs']:,}" for r in rows])
    ax.set_xlabel("background jobs stored when gearmand was killed (kill -9)")
    ax.set_ylabel("share of jobs queued again")
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0.2 * i for i in range(6)])
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title("Recovered fraction: plain gearmand vs. gearctl")
    ax.legend(fontsize=8, loc="upper center", ncols=2)
    return finish(fig, data, out / "recovered_fraction.png")


def failover_timeline(results: Path, out: Path) -> Path | None:
    """Per case, from kill -9 to every job queued again: gearmand alone, and a whole node."""
    takeover = load(results, "takeover_time")
    if takeover is None:
        return None
    rows: list[tuple[str, list[tuple[float, float, str, str]], list[tuple[float, str, str]]]] = []
    kill = load(results, "kill_to_serving")
    if kill is not None:
        for s in kill["summary"]:
            spans = [(0.0, s["serving_median_s"], "#ff7f0e", "agent restarts gearmand")]
            if s["restored_median_s"] is not None:
                spans.append(
                    (
                        s["serving_median_s"],
                        s["restored_median_s"] - s["serving_median_s"],
                        "#2ca02c",
                        "restore (gearmand serves meanwhile)",
                    )
                )
            rows.append(
                (
                    f"gearmand killed, {s['jobs']:,} jobs, {s.get('layout', 'one store')}\n"
                    f"(median of {s['runs']})",
                    spans,
                    [],
                )
            )
    quick = load(results, "takeover_time.quick")
    cases = [(r, "") for r in takeover["results"]]
    if quick is not None:
        cases += [(r, " (quick run)") for r in quick["results"] if r.get("session_expired_after_s")]
    for r, note in cases:
        began = r["takeover_started_after_s"]
        spans = [
            (0.0, began, "#9467bd", "until take-over begins (session expiry)"),
            (began, r["drain_s"], "#17becf", "drain into a survivor"),
        ]
        marks = [
            (r["session_timeout_s"], "|", "session timeout"),
            (r["first_job_s"], "o", "first job queued on a survivor"),
            (r["seconds"], "D", "all jobs queued"),
        ]
        if r.get("session_expired_after_s") is not None:
            marks.append((r["session_expired_after_s"], "x", "member record gone (expiry)"))
        how = "".join(w for w, on in ((", spread", r.get("spread")),
                                      (", pinned", r.get("pinned_cores"))) if on)  # fmt: skip
        label = f"node killed, {r['jobs']:,} jobs{how}\nsession {r['session_timeout_s']:g} s{note}"
        rows.append((label, spans, marks))
    fig, ax = plt.subplots(figsize=(9, 0.75 * len(rows) + 2.6))
    seen: set[str] = set()

    def once(label: str) -> str:
        if label in seen:
            return "_nolegend_"
        seen.add(label)
        return label

    for y, (_label, spans, marks) in enumerate(rows):
        for start, length, color, what in spans:
            ax.barh(y, length, left=start, height=0.5, color=color, label=once(what))
        for x, marker, what in marks:
            ax.plot(
                [x],
                [y],
                marker=marker,
                color="black",
                markersize=8 if marker != "|" else 16,
                linestyle="none",
                label=once(what),
            )
    ax.set_yticks(range(len(rows)), [row[0] for row in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds after kill -9")
    ax.set_title("Failover timeline: from kill -9 to every job queued again")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=3)
    return finish(fig, takeover, out / "failover_timeline.png")


PLOTS: list[Callable[[Path, Path], Path | None]] = [
    restore_throughput,
    recovered_fraction,
    failover_timeline,
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for plot in PLOTS:
        path = plot(args.results, args.out)
        if path is None:
            print(f"{plot.__name__}: no results in {args.results}; run its benchmark first")
        else:
            print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
