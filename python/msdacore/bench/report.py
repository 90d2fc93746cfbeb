"""What a benchmark reports besides its times: the machine, the JSON envelope every
benchmark's results share, the JSON file itself, and the cells of the printed tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys

import numpy as np

from .constants import SCHEMA

__all__ = ["cpu_model", "cpu_caches", "machine_info", "load_average", "results_envelope",
           "command_line", "write_json", "printer", "fmt_ms", "fmt_mb", "fmt_ratio"]


# ----------------------------------------------------------------------------- machine

def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, else platform.processor(), else 'unknown'."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_caches() -> str | None:
    """Cache sizes of cpu0, e.g. 'L1d 48K, L1i 32K, L2 1024K, L3 32768K' (Linux sysfs),
    or None."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    parts = []
    try:
        for entry in sorted(os.listdir(base)):
            if not entry.startswith("index"):
                continue
            d = os.path.join(base, entry)

            def read(name, d=d):
                with open(os.path.join(d, name), encoding="ascii") as f:
                    return f.read().strip()

            level, kind, size = read("level"), read("type"), read("size")
            suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
            parts.append(f"L{level}{suffix} {size}")
    except OSError:
        return None
    return ", ".join(parts) or None


def machine_info() -> dict:
    """{"cpu", "cores" (logical), "usable_cores" (this process's affinity), "caches",
    "system", "python", "numpy"}."""
    cores = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = cores
    return {"cpu": cpu_model(), "cores": cores, "usable_cores": usable,
            "caches": cpu_caches(),
            "system": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(), "numpy": np.__version__}


def load_average():
    """[1, 5, 15 minute load averages] rounded to 0.01, or None where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ----------------------------------------------------------------------------- JSON

def results_envelope(command: str, command_line: str | None, torch_version,
                     **context) -> dict:
    """The keys every benchmark's JSON starts with: schema, command (e.g. "bench"),
    command_line (as given), date (UTC, ISO 8601), then context's keys (e.g. machine=...),
    msdacore {version, build_info}, torch (torch_version, or None)."""
    import msdacore

    return {
        "schema": SCHEMA,
        "command": command,
        "command_line": command_line,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **context,
        "msdacore": {"version": getattr(msdacore, "__version__", None),
                     "build_info": msdacore.build_info()},
        "torch": torch_version,
    }


def command_line(argv) -> str | None:
    """'python -m msdacore ARGS...' for the CLI's argv (shell-quoted), or None."""
    if argv is None:
        return None
    return "python -m msdacore " + " ".join(shlex.quote(a) for a in argv)


def write_json(results: dict, path: str) -> None:
    """Writes results to path (indented, newline-terminated; the folder is created) and
    says so on stdout."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(f"results written to {path}")


# ----------------------------------------------------------------------------- printing

def printer(out=sys.stdout):
    """say(text="") printing a line to out and flushing; prints nothing when out is None."""
    def say(text: str = "") -> None:
        if out is not None:
            print(text, file=out, flush=True)
    return say


def fmt_ms(seconds) -> str:
    """Seconds as milliseconds with two decimals; '-' for None."""
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def fmt_mb(nbytes) -> str:
    """Bytes as MiB with one decimal; '-' for None."""
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def fmt_ratio(ratio) -> str:
    """A ratio as '12.3x'; '-' for None."""
    return "-" if ratio is None else f"{ratio:.1f}x"
