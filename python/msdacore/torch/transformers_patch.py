"""Switching Hugging Face transformers detectors to msdacore in one call.

transformers (5.x, and 4.x from the release that introduced it) computes deformable
attention in a parameter-free module class named ``MultiScaleDeformableAttention``,
one copy per model family (Deformable DETR, RT-DETR, Grounding DINO, MM Grounding
DINO, OmDet-Turbo, LW-DETR, RF-DETR, PP-DocLayout, ...), whose forward is

    forward(value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
            sampling_locations, attention_weights, im2col_step) -> (N, Lq, M*D)

:func:`patch_transformers` gives each such module instance a forward computing the same
thing with msdacore (the spatial shapes are taken from the Python list, so no
device-to-host copy is made). Parameters, state dicts, hooks and module names are left
as they are; :func:`unpatch_transformers` restores the original forward.
"""

from __future__ import annotations

import types

from torch import nn

from .api import ms_deform_attn

__all__ = ["patch_transformers", "unpatch_transformers"]

_TARGET_CLASS_NAME = "MultiScaleDeformableAttention"
_MARK = "_msdacore_patched"


def _msdacore_forward(self, value, value_spatial_shapes, value_spatial_shapes_list=None,
                      level_start_index=None, sampling_locations=None, attention_weights=None,
                      im2col_step=None, **kwargs):
    """transformers' MultiScaleDeformableAttention.forward, computed by msdacore."""
    if value_spatial_shapes_list is not None:
        # A list of Python ints: level_start_index is derived from it on the host.
        shapes, starts = [tuple(s) for s in value_spatial_shapes_list], None
    else:
        shapes, starts = value_spatial_shapes, level_start_index
    return ms_deform_attn(value, shapes, starts, sampling_locations, attention_weights)


def _targets(model: nn.Module):
    for module in model.modules():
        cls = type(module)
        if cls.__name__ == _TARGET_CLASS_NAME and cls.__module__.startswith("transformers."):
            yield module


def patch_transformers(model: nn.Module) -> int:
    """Makes every transformers ``MultiScaleDeformableAttention`` module inside `model`
    compute with msdacore; returns how many modules now do (already patched ones
    included, so calling it twice is harmless and returns the same number).

    Example::

        from transformers import DeformableDetrForObjectDetection
        import msdacore.torch

        model = DeformableDetrForObjectDetection.from_pretrained("SenseTime/deformable-detr")
        msdacore.torch.patch_transformers(model)   # 12 for this model
    """
    count = 0
    for module in _targets(model):
        if not getattr(module, _MARK, False):
            module.forward = types.MethodType(_msdacore_forward, module)
            setattr(module, _MARK, True)
        count += 1
    return count


def unpatch_transformers(model: nn.Module) -> int:
    """Undoes :func:`patch_transformers`; returns how many modules were restored."""
    count = 0
    for module in _targets(model):
        if getattr(module, _MARK, False):
            del module.forward
            delattr(module, _MARK)
            count += 1
    return count
