"""Builds a native plugin of msdacore (a small CMake project shipped in the package: the
XLA FFI handlers of msdacore.jax, the OpenVINO extension of msdacore.openvino) against
the runtime installed beside msdacore, once, and caches the result.

A plugin's ABI belongs to its runtime (OpenVINO's C++ API changes between releases, the
XLA FFI headers come with jaxlib), so it is built for the runtime found at first use
rather than when msdacore is installed: msdacore itself installs and works without any
of them. The cache key holds msdacore's version, the runtime's version, the plugin's
sources and the CMake arguments; a changed key builds again beside the old build.

Cache: $MSDACORE_CACHE_DIR, else $XDG_CACHE_HOME/msdacore, else ~/.cache/msdacore.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


class PluginBuildError(RuntimeError):
    """A plugin could not be built; the message names the plugin, the step and the log."""


def cache_dir() -> Path:
    """The folder plugin builds are cached in (created on demand)."""
    if os.environ.get("MSDACORE_CACHE_DIR"):
        return Path(os.environ["MSDACORE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "msdacore"


def _sources_digest(source_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in source_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _run(step: str, name: str, command: list[str], log: Path) -> None:
    with open(log, "a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise PluginBuildError(
            f"msdacore: building the {name} plugin failed at the {step} step (exit "
            f"{result.returncode}); it needs CMake and a C++17 compiler. Full log: {log}\n"
            f"{tail}")


def build_plugin(name: str, source_dir: Path, product: str, *, runtime_version: str,
                 cmake_args: list[str] = (), extra_source_dirs: list[Path] = ()) -> Path:
    """Builds the CMake project in source_dir (once per key) and returns the path of the
    built file named `product` (e.g. "libmsdacore_openvino.so").

    name             the plugin's name in messages and in the cache folder ("openvino")
    runtime_version  the version of the runtime built against ("2026.4.1")
    cmake_args       extra -D arguments (paths of the runtime's headers or CMake package)
    extra_source_dirs  other folders the build compiles (msdacore's own C++ sources, for a
                     plugin that compiles the core into itself): part of the cache key
    Raises PluginBuildError (with the build log's tail) when CMake or the compiler fails.
    """
    from . import __version__

    key = {"plugin": name, "msdacore": __version__, "runtime": runtime_version,
           "python": sys.version.split()[0], "cmake_args": list(cmake_args),
           "sources": _sources_digest(Path(source_dir)),
           "extra_sources": [_sources_digest(Path(d)) for d in extra_source_dirs]}
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_dir() / f"{name}-{runtime_version}-{key_hash}"
    built = root / "lib" / product
    manifest = root / "manifest.json"
    if built.is_file() and manifest.is_file():
        return built
    if shutil.which("cmake") is None:
        raise PluginBuildError(
            f"msdacore: the {name} plugin is built on first use and needs CMake and a C++17 "
            f"compiler; cmake was not found on the PATH (pip install cmake)")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same key
        if built.is_file() and manifest.is_file():
            return built
        print(f"msdacore: building the {name} plugin for {name} {runtime_version} "
              f"(once, about a minute) in {root}", file=sys.stderr, flush=True)
        start = time.monotonic()
        build = root / "build"
        log = root / "build.log"
        log.write_text("")
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run("configure", name,
             ["cmake", "-S", str(source_dir), "-B", str(build), *generator,
              "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={root / 'lib'}",
              f"-DPython_EXECUTABLE={sys.executable}", *cmake_args], log)
        _run("build", name, ["cmake", "--build", str(build), "--parallel"], log)
        if not built.is_file():
            raise PluginBuildError(f"msdacore: the {name} plugin build finished without "
                                   f"producing {product}; log: {log}")
        manifest.write_text(json.dumps(key, indent=1, sort_keys=True))
        print(f"msdacore: built the {name} plugin in {time.monotonic() - start:.0f} s",
              file=sys.stderr, flush=True)
        return built
