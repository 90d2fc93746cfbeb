"""The ``bench`` command: its options (one parser for the CPU and the GPU benchmark) and
the command itself, which picks the defaults, runs the benchmark and writes the JSON."""

from __future__ import annotations

import argparse
import sys

from ..configs import CONFIGS
from . import constants as C
from .problems import NUMPY_DTYPES
from .report import command_line, write_json

__all__ = ["bounded", "add_arguments", "cmd_bench"]


def bounded(kind, low, *, strict: bool = False):
    """argparse type: text parsed by kind (int or float), at least low (above low when
    strict); a bad value is an argparse error naming it."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (x > low if strict else x >= low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, "
                                             f"got {text}")
        return x
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Adds the options of the bench command (CPU and --device cuda) to p."""
    cpu = [n for n, c in CONFIGS.items() if not c.gpu]
    p.add_argument("--config", action="append", choices=list(CONFIGS),
                   help=f"repeatable; default: the CPU configurations ({', '.join(cpu)}); "
                        f"on CUDA {', '.join(C.CUDA_CONFIGS)}")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (default), or cuda: the GPU benchmark (msdacore.bench.cuda)")
    p.add_argument("--dtype", action="append",
                   choices=sorted(NUMPY_DTYPES) + ["bfloat16", "float16"],
                   help=f"repeatable; default: {' and '.join(C.DTYPES)} on the CPU, "
                        f"{', '.join(C.CUDA_DTYPES)} on CUDA (half types: CUDA only)")
    p.add_argument("--threads", action="append", type=bounded(int, 1),
                   help="thread count for msdacore and torch, repeatable; default: "
                        + " and ".join(map(str, C.THREADS)))
    p.add_argument("--repeats", type=bounded(int, 1), default=None,
                   help=f"timed msdacore runs per measurement (default {C.REPEATS}; "
                        f"{C.CUDA_REPEATS} on CUDA)")
    p.add_argument("--gs-repeats", type=bounded(int, 1), default=None,
                   help=f"timed grid_sample runs per measurement (default {C.GS_REPEATS})")
    p.add_argument("--warmup", type=bounded(int, 0), default=None,
                   help=f"untimed calls before each measurement (default {C.WARMUP}; "
                        f"{C.CUDA_WARMUP} on CUDA)")
    p.add_argument("--max-seconds", type=bounded(float, 0, strict=True), default=None,
                   help="stop a measurement's timed runs once they add up to this many "
                        f"seconds and two were made (default {C.MAX_SECONDS:g})")
    p.add_argument("--min-seconds", type=bounded(float, 0), default=None,
                   help=f"go on past --repeats (up to {C.MAX_RUNS} runs) while a measurement's "
                        "timed runs add up to less than this (default "
                        f"{C.MIN_SECONDS:g}; 0: exactly --repeats)")
    p.add_argument("--quick", action="store_true",
                   help=f"short run: --repeats {C.QUICK['repeats']} --gs-repeats "
                        f"{C.QUICK['gs_repeats']} --max-seconds {C.QUICK['max_seconds']:g} "
                        f"--min-seconds {C.QUICK['min_seconds']:g} unless given")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory calls")
    p.add_argument("--no-grid-sample", action="store_true",
                   help="skip the grid_sample comparison even when torch is available")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy-bytes", type=bounded(int, 4), default=None,
                   help="CUDA: size of the copy that measures the copy bandwidth "
                        "(default 1 GiB)")
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")


def _given(args, **defaults) -> dict:
    """{name: args.name, or defaults[name] where the option was not given}."""
    return {k: getattr(args, k) if getattr(args, k, None) is not None else v
            for k, v in defaults.items()}


def cmd_bench(args) -> int:
    """Runs ``bench`` from the parsed options of add_arguments (args.argv, when set, is
    recorded as the command line); writes --json. Returns the exit status: 0, or 2 when
    the options do not fit the device or CUDA is unavailable."""
    configs = list(dict.fromkeys(args.config or []))  # given order, repeats dropped
    dtypes = list(dict.fromkeys(args.dtype or []))
    line = command_line(getattr(args, "argv", None))
    if args.device == "cuda":
        from .cuda import cuda_unavailable_reason, run_cuda_bench

        reason = cuda_unavailable_reason()
        if reason is not None:
            print(f"bench --device cuda: {reason}", file=sys.stderr)
            return 2
        results = run_cuda_bench(configs or C.CUDA_CONFIGS, dtypes or C.CUDA_DTYPES,
                                 grid_sample=not args.no_grid_sample, seed=args.seed,
                                 command_line=line,
                                 **_given(args, repeats=C.CUDA_REPEATS, warmup=C.CUDA_WARMUP,
                                          copy_bytes=C.COPY_BYTES))
    else:
        from .cpu import run_bench

        half = [d for d in dtypes if d not in NUMPY_DTYPES]
        if half:
            print(f"bench: {', '.join(half)} run on CUDA only (--device cuda)", file=sys.stderr)
            return 2
        defaults = {"repeats": C.REPEATS, "gs_repeats": C.GS_REPEATS,
                    "max_seconds": C.MAX_SECONDS, "min_seconds": C.MIN_SECONDS}
        if args.quick:
            defaults.update(C.QUICK)
        results = run_bench(configs or [n for n, c in CONFIGS.items() if not c.gpu],
                            dtypes or C.DTYPES,
                            list(dict.fromkeys(args.threads or C.THREADS)),
                            memory=not args.no_memory, grid_sample=not args.no_grid_sample,
                            seed=args.seed, command_line=line,
                            **_given(args, warmup=C.WARMUP, **defaults))
    if args.json:
        write_json(results, args.json)
    return 0
