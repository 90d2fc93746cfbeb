"""msdacore for JAX: ms_deform_attn as an XLA FFI custom call (jit, grad, vmap, checkpoint).

The XLA handlers are compiled on first use against the installed jaxlib's FFI headers and
cached (docs/jax.md); msdacore itself installs and works without JAX.
"""

from ._op import ms_deform_attn

__all__ = ["ms_deform_attn"]
