"""The seed example, with and without the plugin.

``python -m autorestrictor demo`` computes
``da.zeros((1_250_000, 200), chunks=(1_250_000, 1)).sum(axis=1)`` on 4
single-threaded worker processes, once per mode (``default`` and
``autorestrictor`` unless ``--modes`` says otherwise), prints a side-by-side
table and, with ``--plot PATH``, draws each run's task stream and per-worker
memory on a common time axis.

Runs go through :func:`autorestrictor.tools.bench.run_one`, so each one has its own
subprocess and fresh cluster.  With ``--link 1gbit`` (and ``--link-shape``) the
runs take place on a shaped network, as in the bench, and the picture shows
transfers taking the time they take on such a link.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence

from autorestrictor.tools.bench import (
    BenchError,
    add_link_arguments,
    check_checksums,
    link_label,
    run_one,
)
from autorestrictor.tools.link import Link, LinkError, check_support

WORKLOAD = "seed-sum"
DEFAULT_MODES = ("default", "autorestrictor")
#: (workers, scale) for a normal and a ``--quick`` run.
NORMAL = (4, 1.0)
QUICK = (2, 0.25)


def run_demo(
    modes: Sequence[str] = DEFAULT_MODES,
    workers: int = NORMAL[0],
    scale: float = NORMAL[1],
    progress: bool = True,
    link: Link | None = None,
) -> list[dict]:
    """Run the seed example once per mode, keeping task streams and RSS samples.

    Parameters
    ----------
    modes : sequence of str
        Modes from :data:`autorestrictor.tools.bench.MODES`.
    workers : int
        Single-threaded worker processes.
    scale : float
        Row multiplier (``scale=1`` is 1,250,000 rows x 200 column chunks).
    progress : bool
        Report each run on stderr.
    link : Link, optional
        Run on this shaped link (see :mod:`autorestrictor.tools.link`).

    Returns
    -------
    list of dict
        One row per mode, with ``"stream"`` and ``"memory"`` details.

    Raises
    ------
    ChecksumMismatch
        If the modes disagree on the result.
    """
    if link is not None:
        check_support(link)
    rows = []
    for i, mode in enumerate(modes, 1):
        if progress:
            print(f"[{i}/{len(modes)}] {WORKLOAD} {mode} ...", file=sys.stderr, flush=True)
        rows.append(run_one(WORKLOAD, mode, workers, scale, details=True, link=link))
    check_checksums(rows)
    return rows


def format_side_by_side(rows: Sequence[dict]) -> str:
    """Metrics as lines, modes as columns; later modes get a ratio vs the first.

    Parameters
    ----------
    rows : sequence of dict
        Rows from :func:`run_demo` (one per mode).

    Returns
    -------
    str
        The table.
    """
    base = rows[0]

    def cell(row, key, fmt, ratio):
        text = fmt(row[key])
        if ratio and row is not base:
            text += f" ({row[key] / base[key]:.2f}x)" if base[key] else " (-)"
        return text

    metrics = [
        ("wall s", "wall_s", lambda v: f"{v:.2f}", True),
        ("MB moved", "bytes_moved", lambda v: f"{v / 1e6:.1f}", True),
        ("transfers", "transfers", lambda v: f"{v:d}", False),
        ("peak MB (worst worker)", "peak_memory_bytes", lambda v: f"{v / 1e6:.0f}", True),
        ("max share of compute", "max_share", lambda v: f"{v:.2f}", False),
        ("plan ms", "plan_s", lambda v: f"{v * 1e3:.1f}", False),
        ("checksum", "checksum", str, False),
    ]
    lines = [["", *[r["mode"] for r in rows]]]
    for label, key, fmt, ratio in metrics:
        lines.append([label, *[cell(r, key, fmt, ratio) for r in rows]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = [
        "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])
        for cells in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    r0 = rows[0]
    out.append(f"{_setting(r0)}; ratios are relative to {r0['mode']!r}")
    return "\n".join(out)


def _setting(row: dict) -> str:
    """``seed-sum, 4 workers x 1 thread, scale 1.0[, link 1gbit per-worker]``."""
    where = link_label(row)
    return (f"{WORKLOAD}, {row['workers']} workers x 1 thread, scale {row['scale']}"
            + ("" if where == "-" else f", link {where}"))


def _prefix_colors(rows: Sequence[dict], n: int = 8) -> dict[str, str]:
    """Colours for the ``n`` task prefixes with the most compute time (red is reserved)."""
    busy: dict[str, float] = defaultdict(float)
    for row in rows:
        for rec in row["stream"]:
            for ss in rec["startstops"]:
                if ss["action"] == "compute":
                    busy[rec["prefix"]] += ss["stop"] - ss["start"]
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown",
               "tab:pink", "tab:olive", "tab:cyan"]
    top = sorted(busy, key=busy.get, reverse=True)[:n]
    return dict(zip(top, palette))


def plot_runs(rows: Sequence[dict], path: str) -> None:
    """Draw task streams and worker memory of each run into a PNG.

    For every mode there are two panels sharing one time axis (seconds since
    the compute started): one lane per worker with compute bars (coloured by
    task prefix) and transfer bars (red, thin, drawn on the receiving worker;
    white gaps are idle time), and the resident memory of each worker.

    Parameters
    ----------
    rows : sequence of dict
        Rows from :func:`run_demo` (need ``"stream"`` and ``"memory"``).
    path : str
        Output file name (PNG).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = _prefix_colors(rows)
    workers = sorted({w for r in rows for w in r["peak_memory_per_worker"]},
                     key=lambda w: int(w.lstrip("w")) if w.lstrip("w").isdigit() else w)
    lane = {w: i for i, w in enumerate(workers)}
    t_end = max(
        max([r["wall_s"]] + [ss["stop"] for rec in r["stream"] for ss in rec["startstops"]])
        for r in rows
    )
    peak_mb = max(r["peak_memory_bytes"] for r in rows) / 1e6

    stream_h = 0.45 * len(workers) + 1.0
    fig, axes = plt.subplots(
        2 * len(rows), 1, sharex=True,
        figsize=(12, len(rows) * (stream_h + 2.4)),
        gridspec_kw={"height_ratios": [stream_h, 2.4] * len(rows)},
        constrained_layout=True,
    )
    for k, row in enumerate(rows):
        ax_s, ax_m = axes[2 * k], axes[2 * k + 1]
        title = (f"{row['mode']}: wall {row['wall_s']:.1f} s, "
                 f"{row['bytes_moved'] / 1e6:.0f} MB moved in {row['transfers']} transfers, "
                 f"peak {row['peak_memory_bytes'] / 1e6:.0f} MB")
        bars: dict[tuple[int, str], list] = defaultdict(list)
        for rec in row["stream"]:
            y = lane[rec["worker"]]
            for ss in rec["startstops"]:
                span = (ss["start"], ss["stop"] - ss["start"])
                if ss["action"] == "compute":
                    bars[(y, colors.get(rec["prefix"], "lightgray"))].append(span)
                elif ss["action"] == "transfer":
                    bars[(y, "transfer")].append(span)
        for (y, color), spans in bars.items():
            if color == "transfer":
                ax_s.broken_barh(spans, (y + 0.18, 0.22), facecolors="red")
            else:
                ax_s.broken_barh(spans, (y - 0.38, 0.52), facecolors=color)
        ax_s.set_yticks(range(len(workers)), workers)
        ax_s.set_ylim(len(workers) - 0.5, -0.5)
        ax_s.set_ylabel("worker")
        ax_s.set_title(title, loc="left", fontsize=10)
        ax_s.axvline(row["wall_s"], color="black", lw=0.8, ls="--")

        t = row["memory"]["t"]
        for w in workers:
            rss = row["memory"]["rss"].get(w)
            if rss:
                ax_m.plot(t, [v / 1e6 for v in rss], lw=1.2, label=w)
        ax_m.set_ylabel("RSS (MB)")
        ax_m.set_ylim(0, peak_mb * 1.1)
        ax_m.set_title(f"{row['mode']}: worker memory (resident set size)", loc="left", fontsize=10)
        ax_m.legend(loc="upper left", fontsize=8, ncol=len(workers))
        ax_m.axvline(row["wall_s"], color="black", lw=0.8, ls="--")
        ax_m.grid(alpha=0.3)

    handles = [Patch(color=c, label=p) for p, c in colors.items()]
    handles += [Patch(color="lightgray", label="other tasks"), Patch(color="red", label="transfer")]
    r0 = rows[0]
    heading = (f"{_setting(r0)}\n"
               "compute bars by task prefix; red = transfer into this worker; white = idle")
    fig.legend(handles=handles, loc="outside upper center", fontsize=8, ncol=min(len(handles), 5),
               title=heading, title_fontsize=10, frameon=False)
    axes[-1].set_xlim(0, t_end * 1.02)
    axes[-1].set_xlabel("seconds since the compute started (dashed line: end of compute)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    """Run the ``demo`` subcommand; returns the process exit code."""
    workers, scale = QUICK if args.quick else NORMAL
    workers = args.workers or workers
    scale = args.scale or scale
    modes = [m for m in args.modes.split(",") if m]
    try:
        link = Link(args.link, args.link_shape) if args.link else None
        rows = run_demo(modes, workers, scale, link=link)
    except (BenchError, LinkError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_side_by_side(rows))
    if args.plot:
        plot_runs(rows, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser``."""
    parser.add_argument("--quick", action="store_true",
                        help=f"smaller run: {QUICK[0]} workers, scale {QUICK[1]}")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="write task streams and memory over time to this PNG")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"comma-separated modes (default: {','.join(DEFAULT_MODES)})")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"worker processes (default {NORMAL[0]}, --quick {QUICK[0]})")
    parser.add_argument("--scale", type=float, default=None,
                        help=f"row multiplier (default {NORMAL[1]}, --quick {QUICK[1]})")
    add_link_arguments(parser)
