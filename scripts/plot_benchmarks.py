#!/usr/bin/env python3
"""Plots and tables from the JSON of ``python -m msdacore bench --json``.

    python scripts/plot_benchmarks.py results.json --out docs/
        [--floor floor.json] [--markdown fragment.md] [--update-doc docs/benchmarks.md]
        [--dtype float32] [--threads 2] [--no-plots]

--out DIR         writes DIR/benchmarks_time.png (msdacore and grid_sample time per
                  configuration, log scale, forward and forward+backward, at --dtype and
                  --threads) and DIR/benchmarks_threads.png (msdacore speed-up from the
                  smallest to the largest thread count measured); needs matplotlib
--markdown PATH   writes a markdown fragment: run context, the results table, the
                  targets of the CPU-speed issue with met / not met marks (at --dtype and
                  --threads), and the floor when --floor is given
--update-doc PATH replaces the part of PATH between the lines
                  "<!-- benchmarks:begin -->" and "<!-- benchmarks:end -->" with the same
                  fragment plus the plots; creates PATH with those markers when it does
                  not exist (with --append, adds a section with them at the end of a PATH
                  that has none), and leaves everything outside them as it was
--floor PATH      the JSON written by benchmarks/floor/run.sh --json

Reads the passes, their labels and the JSON schema version from msdacore.bench, so
msdacore must be importable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from msdacore.bench.constants import PASS_LABELS, PASSES, SCHEMA
from msdacore.bench.report import fmt_mb, fmt_ratio

BEGIN = "<!-- benchmarks:begin -->"
END = "<!-- benchmarks:end -->"

# Targets of the CPU-speed issue: minimum ratio grid_sample / msdacore, float32, 2 threads.
TARGETS = {
    "detr-enc": {"forward": 40, "forward_backward": 30},
    "small": {"forward": 30, "forward_backward": 25},
    "detr-dec": {"forward": 5, "forward_backward": 5},
    "dat": {"forward": 3, "forward_backward": 3},
}
# msdacore should be within this factor of the floor (detr-enc, float32, 2 threads).
FLOOR_FACTOR = 2.0
FLOOR_CONFIG = "detr-enc"

TIME_PNG = "benchmarks_time.png"
THREADS_PNG = "benchmarks_threads.png"


# ----------------------------------------------------------------------------- data

def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("command") != "bench" or "results" not in data:
        raise SystemExit(f"{path}: not the JSON of `python -m msdacore bench --json`")
    if data.get("schema") != SCHEMA:
        raise SystemExit(f"{path}: JSON schema {data.get('schema')}, this script reads {SCHEMA}")
    return data


def configs_in_order(data: dict) -> list:
    seen = []
    for row in data["results"]:
        if row["config"] not in seen:
            seen.append(row["config"])
    return seen


def find(data: dict, config: str, dtype: str, threads: int):
    for row in data["results"]:
        if row["config"] == config and row["dtype"] == dtype and row["threads"] == threads:
            return row
    return None


def pick_threads(data: dict, dtype: str, wanted: int) -> int | None:
    """wanted when measured at dtype, else the largest thread count measured."""
    counts = sorted({r["threads"] for r in data["results"] if r["dtype"] == dtype})
    if not counts:
        return None
    return wanted if wanted in counts else counts[-1]


def median_ms(row, who: str, key: str):
    part = row.get(who) if row else None
    if not part:
        return None
    return part[key]["median_s"] * 1e3


def _ms(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


# ----------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_times(data: dict, out_dir: str, dtype: str = "float32", threads: int = 2):
    """Bars of msdacore and grid_sample median time per configuration (log scale),
    forward and forward+backward side by side. Returns the PNG path, or None."""
    threads = pick_threads(data, dtype, threads)
    if threads is None:
        return None
    plt = _pyplot()
    names = [c for c in configs_in_order(data) if find(data, c, dtype, threads)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    width = 0.38
    for ax, key in zip(axes, PASSES):
        ours = [median_ms(find(data, c, dtype, threads), "msdacore", key) for c in names]
        gs = [median_ms(find(data, c, dtype, threads), "grid_sample", key) for c in names]
        xs = list(range(len(names)))
        ax.bar([x - width / 2 for x in xs], ours, width, label="msdacore", color="#2a6f97")
        if any(g is not None for g in gs):
            ax.bar([x + width / 2 for x in xs], [g if g is not None else 0 for g in gs], width,
                   label="grid_sample composition", color="#c9803b")
        for x, a, b in zip(xs, ours, gs):
            if a and b:
                ax.annotate(f"{b / a:.1f}x", (x, max(a, b)), textcoords="offset points",
                            xytext=(0, 4), ha="center", fontsize=9)
        ax.set_yscale("log")
        lo_y, hi_y = ax.get_ylim()
        ax.set_ylim(lo_y, hi_y * 1.8)  # room for the labels
        ax.set_xticks(xs)
        ax.set_xticklabels(names)
        ax.set_title(PASS_LABELS[key])
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("median time (ms, log scale)")
    axes[0].legend(loc="upper right", fontsize=9)
    fig.suptitle(f"time per configuration, {dtype}, {threads} thread(s); "
                 "labels: grid_sample / msdacore")
    fig.tight_layout()
    path = os.path.join(out_dir, TIME_PNG)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_threads(data: dict, out_dir: str):
    """msdacore speed-up from the smallest to the largest thread count, per
    configuration and dtype, forward and forward+backward. Returns the path or None."""
    counts = sorted({r["threads"] for r in data["results"]})
    if len(counts) < 2:
        return None
    lo, hi = counts[0], counts[-1]
    plt = _pyplot()
    dtypes = sorted({r["dtype"] for r in data["results"]})
    names = configs_in_order(data)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    width = 0.8 / max(len(dtypes), 1)
    colors = ["#2a6f97", "#61a5c2", "#89c2d9", "#a9d6e5"]
    for ax, key in zip(axes, PASSES):
        xs = list(range(len(names)))
        for j, dtype in enumerate(dtypes):
            speedups = []
            for c in names:
                a = median_ms(find(data, c, dtype, lo), "msdacore", key)
                b = median_ms(find(data, c, dtype, hi), "msdacore", key)
                speedups.append(a / b if a and b else 0.0)
            offs = [x - 0.4 + width * (j + 0.5) for x in xs]
            ax.bar(offs, speedups, width, label=dtype, color=colors[j % len(colors)])
            for x, s in zip(offs, speedups):
                if s:
                    ax.annotate(f"{s:.2f}", (x, s), textcoords="offset points", xytext=(0, 3),
                                ha="center", fontsize=8)
        ax.axhline(hi / lo, color="gray", linestyle="--", linewidth=1,
                   label=f"ideal ({hi / lo:g}x)")
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_xticks(xs)
        ax.set_xticklabels(names)
        ax.set_title(PASS_LABELS[key])
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"msdacore speed-up, {lo} -> {hi} threads")
    axes[0].legend(fontsize=9, loc="best")
    fig.suptitle(f"thread scaling of msdacore: time at {lo} thread(s) / time at {hi} threads")
    fig.tight_layout()
    path = os.path.join(out_dir, THREADS_PNG)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- markdown

def context_lines(data: dict) -> list:
    mach = data.get("machine", {})
    build = data.get("msdacore", {}).get("build_info", {})
    settings = data.get("settings", {})
    command = data.get("command_line") or "python -m msdacore bench"
    lines = [
        f"Measured {data.get('date', '?')} with `{command}`"
        f" on {mach.get('cpu', '?')} ({mach.get('cores', '?')} cores"
        + (f"; {mach['caches']}" if mach.get("caches") else "") + "), "
        f"msdacore {data.get('msdacore', {}).get('version', '?')} "
        f"(cpu_isa {build.get('cpu_isa', '?')}, {build.get('compiler', '?')}), "
        f"torch {data.get('torch') or 'not installed'}, NumPy {mach.get('numpy', '?')}; "
        f"load average {mach.get('loadavg_start')} at the start, "
        f"{mach.get('loadavg_end')} at the end.",
        "",
        f"Medians of {settings.get('repeats', '?')} msdacore and "
        f"{settings.get('grid_sample_repeats', '?')} grid_sample runs after "
        f"{settings.get('warmup', '?')} warm-up (more runs for calls under "
        f"{settings.get('min_seconds', '?')} s in all, fewer past "
        f"{settings.get('max_seconds', '?')} s); ratio = grid_sample time / msdacore time, "
        "same inputs and thread count in the same process. Peak memory: increase of the "
        "resident set over one call, outputs included (MB)"
        + ("." if settings.get("memory") else " (not measured in this run)."),
    ]
    return lines


def results_table(data: dict) -> list:
    lines = ["| configuration | dtype | threads | pass | msdacore ms | grid_sample ms | ratio "
             "| msdacore peak MB | grid_sample peak MB |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in data["results"]:
        for key in PASSES:
            ours = row["msdacore"][key]
            gs = row["grid_sample"][key] if row.get("grid_sample") else None
            lines.append(
                f"| `{row['config']}` | {row['dtype']} | {row['threads']} | {PASS_LABELS[key]} "
                f"| {_ms(ours['median_s'] * 1e3)} | {_ms(gs['median_s'] * 1e3) if gs else '-'} "
                f"| {fmt_ratio(row['ratios'][key])} | {fmt_mb(ours.get('peak_rss_bytes'))} "
                f"| {fmt_mb(gs.get('peak_rss_bytes')) if gs else '-'} |")
    return lines


def sizes_table(data: dict) -> list:
    lines = ["| configuration | dtype | samples | inputs MB | output MB | gradients MB |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    seen = set()
    for row in data["results"]:
        key = (row["config"], row["dtype"])
        if key in seen or "sizes" not in row:
            continue
        seen.add(key)
        s = row["sizes"]
        lines.append(f"| `{row['config']}` | {row['dtype']} | {s['samples']} "
                     f"| {fmt_mb(s['input_bytes'])} | {fmt_mb(s['output_bytes'])} "
                     f"| {fmt_mb(s['grads_bytes'])} |")
    return lines


def targets_table(data: dict, dtype: str = "float32", threads: int = 2) -> list:
    """The issue's targets, met or not, at dtype and threads."""
    lines = [f"Targets ({dtype}, {threads} threads; ratio = grid_sample / msdacore):", "",
             "| config | pass | target | measured | |",
             "| --- | --- | ---: | ---: | --- |"]
    for name, targets in TARGETS.items():
        row = find(data, name, dtype, threads)
        for key in PASSES:
            ratio = row["ratios"][key] if row else None
            if ratio is None:
                mark = "not measured"
            else:
                mark = "met" if ratio >= targets[key] else "**not met**"
            lines.append(f"| `{name}` | {PASS_LABELS[key]} | >= {targets[key]}x "
                         f"| {fmt_ratio(ratio)} | {mark} |")
    return lines


def floor_lines(data: dict, floor: dict, dtype: str = "float32") -> list:
    """The floor of benchmarks/floor and msdacore against it: the lean floor when the JSON
    has it (``*_lean_ms``, benchmarks/floor/run.sh today), else the data-movement floor
    of older floor programs."""
    threads = floor.get("threads")
    row = find(data, floor.get("config", FLOOR_CONFIG), dtype, threads) if data else None
    lean = floor.get("forward_lean_ms") is not None
    head = (f"Floor (`{floor.get('config', FLOOR_CONFIG)}`, float32, {threads} threads, "
            f"`{floor.get('command_line', 'bash benchmarks/floor/run.sh')}`, compiled by "
            f"{floor.get('compiler', '?')} with `{floor.get('flags', '?')}`): ")
    if lean:
        text = (
            "the lean floor, the least work of a kernel that computes the op from its "
            "inputs: per (query, head) the locations and attention weights read once, the "
            "corners and weights of all points computed in 16-float lanes, the 4 corner rows "
            "x D floats of every sample gathered with their weights and each output row "
            "written once (backward: per corner a dot product with grad_output and a "
            f"weighted add into grad_value). {floor.get('in_bounds', '?')} in-bounds samples "
            f"of {floor.get('samples', '?')}. Beside it, the data-movement floor (precomputed "
            "corner rows, no weights). See benchmarks/floor/floor.cpp.")
        columns = ("lean floor ms", "data-movement floor ms", "msdacore / lean floor")
        keys = ("{}_lean_ms", "{}_ms")
    else:
        text = (
            f"the cost of only moving the data, {floor.get('in_bounds', '?')} in-bounds "
            f"samples of {floor.get('samples', '?')}, "
            f"{floor.get('gathered_mb_per_pass', 0):.0f} MB of corner rows gathered per pass. "
            "Forward: sum the 4 corner rows x D floats of every sample into a register "
            "accumulator and write the output row. Backward: zero grad_value, then per sample "
            "and corner a dot product of the value row with the grad_output row and an add of "
            "the grad_output row into the grad_value row, each thread owning a block of heads "
            "(race-free, no atomics). Corner rows precomputed from the bench's sampling "
            "locations outside the timing; no attention or bilinear weights (see "
            "benchmarks/floor/floor.cpp).")
        columns = ("floor ms", "floor with corner arithmetic ms", "msdacore / floor")
        keys = ("{}_ms", "{}_with_corners_ms")
    lines = [
        head + text,
        "",
        f"| pass | {columns[0]} | {columns[1]} | msdacore ms | {columns[2]} "
        f"| target (<= {FLOOR_FACTOR:g}x) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for key in PASSES:
        f_ms = floor.get(keys[0].format(key))
        other_ms = floor.get(keys[1].format(key))
        ours = median_ms(row, "msdacore", key)
        factor = ours / f_ms if ours and f_ms else None
        mark = ("not measured" if factor is None
                else "met" if factor <= FLOOR_FACTOR else "**not met**")
        lines.append(f"| {PASS_LABELS[key]} | {_ms(f_ms)} | {_ms(other_ms)} | {_ms(ours)} "
                     f"| {'-' if factor is None else f'{factor:.1f}x'} | {mark} |")
    return lines


def markdown_fragment(data: dict, floor: dict | None = None, dtype: str = "float32",
                      threads: int = 2, images: list | None = None) -> str:
    """The generated part of docs/benchmarks.md."""
    parts = ["<!-- generated by scripts/plot_benchmarks.py from the JSON of "
             "`python -m msdacore bench --json`; edit outside the markers -->", ""]
    parts += context_lines(data) + [""]
    t = pick_threads(data, dtype, threads)
    if t is not None:
        parts += targets_table(data, dtype, t) + [""]
    if floor:
        parts += floor_lines(data, floor) + [""]
    for title, path in images or []:
        parts += [f"![{title}]({path})", ""]
    parts += ["All measurements:", ""] + results_table(data) + [""]
    parts += ["Problem sizes:", ""] + sizes_table(data)
    skipped = data.get("skipped") or []
    if skipped:
        parts += ["", "Skipped: " + ", ".join(f"`{s['config']}` ({s['reason']})" for s in skipped)
                  + "."]
    return "\n".join(parts) + "\n"


SECTION_TEMPLATE = """## CPU kernels against the grid_sample composition

msdacore's CPU kernels against the grid_sample composition (`msdacore.grid_sample`, one
`torch.nn.functional.grid_sample` per level and a weighted sum: what models run without a
custom kernel), on the SPEC benchmark configurations with realistic inputs.

Reproduce:

```bash
python -m msdacore bench --json bench.json                # all CPU configurations, ~10 min
bash benchmarks/floor/run.sh --json floor.json            # the floor (g++ with OpenMP)
python scripts/plot_benchmarks.py bench.json --floor floor.json --out docs/ \\
    --update-doc docs/benchmarks.md                       # plots and the tables below
```

{begin}
{end}
"""
DOC_TEMPLATE = "# Benchmarks\n\n" + SECTION_TEMPLATE


def update_doc(path: str, fragment: str, append: bool = False) -> None:
    """Replaces the text between the markers of path (creating path if absent; with
    append, adding a section with the markers at the end of a path that has none)."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if append and BEGIN not in text and END not in text:
            text = text.rstrip("\n") + "\n\n" + SECTION_TEMPLATE.format(begin=BEGIN, end=END)
    else:
        text = DOC_TEMPLATE.format(begin=BEGIN, end=END)
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise SystemExit(f"{path}: has no '{BEGIN}' ... '{END}' markers; add them where the "
                         "generated tables go, or pass --append to add a section at the end")
    text = text[:i + len(BEGIN)] + "\n" + fragment + text[j:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="JSON written by python -m msdacore bench --json")
    parser.add_argument("--out", default=None, help="folder for the PNG plots")
    parser.add_argument("--floor", default=None, help="JSON of benchmarks/floor/run.sh --json")
    parser.add_argument("--markdown", default=None, metavar="PATH",
                        help="write the markdown fragment (tables) to PATH")
    parser.add_argument("--update-doc", default=None, metavar="PATH",
                        help="regenerate the marked part of PATH (e.g. docs/benchmarks.md)")
    parser.add_argument("--append", action="store_true",
                        help="with --update-doc: when PATH has no markers, append a section "
                             "with them at its end")
    parser.add_argument("--dtype", default="float32", help="dtype of the time plot and targets")
    parser.add_argument("--threads", type=int, default=2,
                        help="thread count of the time plot and targets (default 2)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)

    data = load(args.results)
    floor = None
    if args.floor:
        with open(args.floor, encoding="utf-8") as f:
            floor = json.load(f)

    written = []
    out_dir = args.out
    if out_dir is None and args.update_doc:
        out_dir = os.path.dirname(os.path.abspath(args.update_doc))
    if not args.no_plots and out_dir is not None:
        try:
            _pyplot()
        except ImportError:
            print("matplotlib is not installed: no plots (pip install matplotlib)",
                  file=sys.stderr)
        else:
            os.makedirs(out_dir, exist_ok=True)
            for path in (plot_times(data, out_dir, args.dtype, args.threads),
                         plot_threads(data, out_dir)):
                if path:
                    written.append(path)

    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(markdown_fragment(data, floor, args.dtype, args.threads))
        written.append(args.markdown)
    if args.update_doc:
        doc_dir = os.path.dirname(os.path.abspath(args.update_doc))
        images = []
        for title, name in (("time per configuration", TIME_PNG),
                            ("thread scaling", THREADS_PNG)):
            if os.path.exists(os.path.join(doc_dir, name)):
                images.append((title, name))
        update_doc(args.update_doc,
                   markdown_fragment(data, floor, args.dtype, args.threads, images),
                   append=args.append)
        written.append(args.update_doc)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("nothing written: give --out, --markdown or --update-doc", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
