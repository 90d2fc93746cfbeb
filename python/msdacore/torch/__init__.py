"""PyTorch adapters of msdacore (this subpackage needs torch; ``import msdacore`` does not).

- :func:`ms_deform_attn`: the operator ``torch.ops.msdacore.ms_deform_attn`` with autograd
  (its backward is ``torch.ops.msdacore.ms_deform_attn_backward``), ``torch.compile``
  without graph breaks, and autocast.
- :func:`multi_scale_deformable_attn` and the ``MSDeformAttnFunction`` /
  ``multi_scale_deformable_attn_pytorch`` / ``ms_deform_attn_core_pytorch`` names: the
  call forms of mmcv and Deformable DETR.
- :class:`MSDeformAttn`: Deformable DETR's module (``n_levels=1``: single-scale).
- :class:`DeformableAttention2d` (alias ``DAttention``): DAT-style deformable attention.
- :func:`patch_transformers`: switches a Hugging Face transformers detector to msdacore.

The computing is done by msdacore's core, reached through DLPack without copies.
See docs/torch.md.
"""

from __future__ import annotations

from .api import level_start_index_of, ms_deform_attn
from .dat import DAttention, DeformableAttention2d
from .functional import (
    MSDeformAttnFunction,
    MultiScaleDeformableAttnFunction,
    ms_deform_attn_core_pytorch,
    multi_scale_deformable_attn,
    multi_scale_deformable_attn_pytorch,
)
from .msdeform_attn import MSDeformAttn
from .transformers_patch import patch_transformers, unpatch_transformers

__all__ = [
    "ms_deform_attn",
    "level_start_index_of",
    "multi_scale_deformable_attn",
    "multi_scale_deformable_attn_pytorch",
    "ms_deform_attn_core_pytorch",
    "MSDeformAttnFunction",
    "MultiScaleDeformableAttnFunction",
    "MSDeformAttn",
    "DeformableAttention2d",
    "DAttention",
    "patch_transformers",
    "unpatch_transformers",
]
