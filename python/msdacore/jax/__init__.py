"""msdacore for JAX: ms_deform_attn as an XLA FFI custom call (jit, grad, vmap, checkpoint).

The XLA handlers are compiled on first use against the installed jaxlib's FFI headers and
cached (docs/jax.md); msdacore itself installs and works without JAX.
"""

try:
    import jax as _jax  # noqa: F401
except ImportError as error:  # a clear message instead of a bare "No module named 'jax'"
    raise ImportError("msdacore.jax needs JAX with jax.ffi: pip install 'msdacore[jax]' (or "
                      "jax and jaxlib)") from error

from ._op import ms_deform_attn

__all__ = ["ms_deform_attn"]
