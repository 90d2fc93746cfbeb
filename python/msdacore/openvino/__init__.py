"""msdacore for OpenVINO: an extension library holding msdacore's
MultiScaleDeformableAttention operation (msdacore's CPU kernel), which OpenVINO's ONNX
frontend maps the ``msdacore`` domain's node to and its PyTorch frontend maps calls of
``torch.ops.msdacore.ms_deform_attn`` to.

    import openvino as ov, msdacore.openvino
    core = ov.Core()
    core.add_extension(msdacore.openvino.extension_path())
    compiled = core.compile_model(core.read_model("model.onnx"), "CPU")

    ov_model = ov.convert_model(torch_model, example_input=...,
                                extension=msdacore.openvino.extension_path())

The extension is C++ against OpenVINO's C++ API, whose ABI belongs to each OpenVINO
release, so it is built (CMake and a C++17 compiler, about a minute) against the
installed ``openvino`` package on first use and cached per msdacore version, OpenVINO
version and sources (msdacore._plugin_build). ``python -m msdacore.openvino`` builds it
and prints its path.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["extension_path", "openvino_version"]

_PACKAGE_DIR = Path(__file__).resolve().parent
_EXTENSION_SOURCES = _PACKAGE_DIR / "extension"
_PRODUCT = "libmsdacore_openvino.so"


def _import_openvino():
    try:
        import openvino
    except ImportError as error:
        raise ImportError("msdacore.openvino needs OpenVINO: pip install openvino "
                          "(or msdacore[openvino] for the tested version)") from error
    return openvino


def openvino_version() -> str:
    """The installed OpenVINO's release ("2026.4.1"), the version the extension is built
    for."""
    from importlib import metadata

    _import_openvino()
    return metadata.version("openvino")


def _core_sources() -> tuple[Path, list[Path]]:
    """msdacore's C++ sources the extension compiles in: the folder for CMake's
    add_subdirectory, and the folders whose contents belong to the cache key. An installed
    wheel carries them in msdacore/_cpp; a source checkout has them at its root."""
    installed = _PACKAGE_DIR.parent / "_cpp"
    checkout = _PACKAGE_DIR.parents[2]
    for root in (installed, checkout):
        lists = root / "CMakeLists.txt"
        if lists.is_file() and "project(msdacore " in lists.read_text(errors="replace"):
            return root, [root / "cpp", root / "cmake"]
    raise FileNotFoundError(
        f"msdacore.openvino: msdacore's C++ sources were not found (neither {installed} nor "
        f"a source checkout at {checkout}); reinstall msdacore from its wheel or sources")


@functools.lru_cache(maxsize=None)
def extension_path() -> str:
    """Path of the OpenVINO extension library (libmsdacore_openvino.so), built on first
    use against the installed OpenVINO and cached (msdacore._plugin_build.cache_dir()).

    Pass it to ``ov.Core.add_extension`` (Python or C++), to ``ov.convert_model(...,
    extension=path)``, or to benchmark_app's ``-extensions``. Raises ImportError without
    OpenVINO, msdacore._plugin_build.PluginBuildError when the build fails (the message
    holds the log's tail).
    """
    from msdacore._plugin_build import build_plugin

    _import_openvino()
    from openvino import utils as openvino_utils

    core_dir, core_key_dirs = _core_sources()
    built = build_plugin(
        "openvino", _EXTENSION_SOURCES, _PRODUCT, runtime_version=openvino_version(),
        cmake_args=[f"-DOpenVINO_DIR={openvino_utils.get_cmake_path()}",
                    f"-DMSDACORE_SOURCE_DIR={core_dir}"],
        extra_source_dirs=core_key_dirs)
    return str(built)
