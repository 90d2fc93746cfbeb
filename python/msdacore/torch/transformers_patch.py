"""Switching Hugging Face transformers models to msdacore in one call.

transformers 5.x samples deformable attention in three ways, one or more per model family:

1. A parameter-free module class named ``MultiScaleDeformableAttention`` (one copy per
   family: Deformable DETR, Grounding DINO, MM Grounding DINO, OmDet-Turbo, RT-DETR,
   LW-DETR, RF-DETR, PP-DocLayout V2/V3/V4) whose ``forward(value, value_spatial_shapes,
   value_spatial_shapes_list, level_start_index, sampling_locations, attention_weights,
   im2col_step)`` does the sampling.
   Patched: the module's class becomes a msdacore subclass of it whose forward calls
   :func:`msdacore.torch.transformers_functions.multi_scale_deformable_attention_forward`.
2. An attention module whose ``forward`` calls a module-level function of its family by
   its global name: ``multi_scale_deformable_attention_v2`` (RT-DETRv2) or
   ``multi_scale_deformable_attention`` (Mask2Former, OneFormer).
   Patched: the class becomes a msdacore subclass whose forward is the very same code,
   run with that one global name bound to msdacore's function of the same signature.
3. An attention module holding the function in an attribute, ``ms_deformable_attn_core``
   (D-FINE, DEIMv2). Patched: the attribute is set to msdacore's function.

The msdacore subclasses live in this module under names pickle finds (they are created on
demand, also when a saved model is loaded in a new process), so patched models survive
``torch.save``/``torch.load`` of the whole model, ``copy.deepcopy``, ``state_dict`` round
trips and ``.to(dtype)``; parameters, buffers, module names and hooks are unchanged.
Anything that looks like deformable attention but is not one of these (a custom
subclass, a forward replaced on the instance, an unknown function) is left alone with a
warning naming it: never silently.
"""

from __future__ import annotations

import dis
import inspect
import re
import sys
import types
import warnings
from typing import Optional

from torch import nn

from . import transformers_functions as _functions

__all__ = ["patch_transformers", "unpatch_transformers", "PatchReport"]

_MODULE_CLASS = "MultiScaleDeformableAttention"
_MODULE_PARAMETERS = ("self", "value", "value_spatial_shapes", "value_spatial_shapes_list",
                      "level_start_index", "sampling_locations", "attention_weights",
                      "im2col_step")
_CORE_ATTRIBUTE = "ms_deformable_attn_core"
# transformers function name -> its parameters (checked before replacing a call)
_FUNCTION_PARAMETERS = {
    "multi_scale_deformable_attention": (
        "value", "value_spatial_shapes", "sampling_locations", "attention_weights"),
    "multi_scale_deformable_attention_v2": (
        "value", "value_spatial_shapes", "sampling_locations", "attention_weights",
        "num_points_list", "method"),
}
_SEPARATOR = "__msdacore__"  # patched class name: <base name>__msdacore__<base module, . -> __>
# class names of deformable attention modules (besides any module with sampling_offsets)
_LOOKS_DEFORMABLE = re.compile(r"multi.?scale.?deformable|deformable.?attn|msdeform",
                               re.IGNORECASE)


# ---------------------------------------------------------------------------
# What patched code calls. Module-level functions, so pickle finds them by name; each
# looks msdacore's function up when called.


def _module_forward(self, *args, **kwargs):
    """forward of patched ``MultiScaleDeformableAttention`` modules."""
    return _functions.multi_scale_deformable_attention_forward(*args, **kwargs)


def _call_multi_scale_deformable_attention(*args, **kwargs):
    return _functions.multi_scale_deformable_attention(*args, **kwargs)


def _call_multi_scale_deformable_attention_v2(*args, **kwargs):
    return _functions.multi_scale_deformable_attention_v2(*args, **kwargs)


_REPLACEMENTS = {
    "multi_scale_deformable_attention": _call_multi_scale_deformable_attention,
    "multi_scale_deformable_attention_v2": _call_multi_scale_deformable_attention_v2,
}


# ---------------------------------------------------------------------------
# Reading transformers' code


def _from_transformers(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").startswith("transformers.")


def _family(cls) -> str:
    """transformers.models.<family>.modeling_<family>.X -> <family>."""
    parts = cls.__module__.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["transformers", "models"] \
        else cls.__module__


def _parameters(func) -> Optional[tuple]:
    try:
        return tuple(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None


def _is_transformers_function(func, name: str) -> bool:
    """func is transformers' function `name` with the parameters msdacore's stands in for."""
    return (isinstance(func, types.FunctionType) and func.__name__ == name
            and _from_transformers(func) and _parameters(func) == _FUNCTION_PARAMETERS[name])


def _globals_called(func) -> dict:
    """{name: transformers function} for the known sampling functions `func` loads as
    globals (LOAD_GLOBAL in its own code)."""
    code = getattr(func, "__code__", None)
    if code is None:
        return {}
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname == "LOAD_GLOBAL"}
    found = {}
    for name in names & _REPLACEMENTS.keys():
        target = func.__globals__.get(name)
        if _is_transformers_function(target, name):
            found[name] = target
    return found


def _class_kind(cls) -> Optional[str]:
    """"module" or "globals" (see the module docstring) for a transformers class msdacore
    can patch by subclassing it, else None."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and _from_transformers(cls)
            and "." not in cls.__qualname__ and getattr(sys.modules.get(cls.__module__),
                                                        cls.__name__, None) is cls):
        return None
    forward = cls.__dict__.get("forward")
    if cls.__name__ == _MODULE_CLASS and forward is not None \
            and _parameters(forward) == _MODULE_PARAMETERS:
        return "module"
    if isinstance(forward, types.FunctionType) and _globals_called(forward):
        return "globals"
    return None


# ---------------------------------------------------------------------------
# The patched classes


def _patched_name(base) -> str:
    return base.__name__ + _SEPARATOR + base.__module__.replace(".", "__")


def _rebound(func, replacements: dict):
    """func's code run with `replacements` bound in (a copy of) its globals."""
    scope = dict(func.__globals__)
    scope.update(replacements)
    new = types.FunctionType(func.__code__, scope, func.__name__, func.__defaults__,
                             func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__, new.__doc__ = func.__qualname__, func.__doc__
    new.__annotations__ = dict(getattr(func, "__annotations__", {}))
    new.__module__ = func.__module__
    new.__wrapped__ = func
    return new


def _extra_repr(self):
    base = super(type(self), self).extra_repr()
    return "msdacore" + (", " + base if base else "")


def _make_patched_class(base, kind: str):
    namespace = {
        "__module__": __name__,
        "__doc__": f"{base.__name__} ({base.__module__}) computing its deformable attention "
                   "sampling with msdacore (msdacore.torch.patch_transformers).",
        "_msdacore_base": base,
        "_msdacore_kind": kind,
        "extra_repr": _extra_repr,
    }
    if kind == "module":
        namespace["forward"] = _module_forward
        namespace["_msdacore_replaced"] = f"{base.__name__}.forward"
    else:
        called = _globals_called(base.__dict__["forward"])
        namespace["forward"] = _rebound(base.__dict__["forward"],
                                        {name: _REPLACEMENTS[name] for name in called})
        namespace["_msdacore_replaced"] = \
            f"{base.__name__}.forward: " + ", ".join(sorted(called))
    name = _patched_name(base)
    cls = type(base)(name, (base,), namespace)
    cls.__qualname__ = name
    return cls


_PATCHED: dict = {}  # base class -> patched class


def _patched_class(base):
    cls = _PATCHED.get(base)
    if cls is None:
        kind = _class_kind(base)
        if kind is None:
            return None
        cls = _PATCHED[base] = _make_patched_class(base, kind)
        globals()[cls.__name__] = cls  # where pickle looks
    return cls


def __getattr__(name: str):
    """Patched classes by name, created on first use (pickle: loading a saved model)."""
    base_name, separator, module_name = name.partition(_SEPARATOR)
    if separator and base_name and module_name:
        module_name = module_name.replace("__", ".")
        if module_name.startswith("transformers."):
            import importlib

            base = getattr(importlib.import_module(module_name), base_name, None)
            if isinstance(base, type) and _patched_name(base) == name:
                cls = _patched_class(base)
                if cls is not None:
                    return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_patched_class(cls) -> bool:
    return cls.__dict__.get("_msdacore_base") is not None and cls.__module__ == __name__


# ---------------------------------------------------------------------------
# Patching


class PatchReport(dict):
    """What :func:`patch_transformers` (or :func:`unpatch_transformers`) changed:
    ``{family: {what: count}}``, e.g. ``{"rt_detr_v2": {"RTDetrV2MultiscaleDeformable
    Attention.forward: multi_scale_deformable_attention_v2": 6}}``. ``total`` (and
    ``int(report)``) is the number of modules."""

    @property
    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self.values())

    def __int__(self) -> int:
        return self.total

    def _add(self, cls, what: str) -> None:
        counts = self.setdefault(_family(cls), {})
        counts[what] = counts.get(what, 0) + 1


def _core_function(module) -> Optional[str]:
    """The state of a module's ``ms_deformable_attn_core``: "patched", "original", or
    None when it has no such attribute or holds something else."""
    core = module.__dict__.get(_CORE_ATTRIBUTE)
    if core is None:
        return None
    if core is _call_multi_scale_deformable_attention_v2:
        return "patched"
    if _is_transformers_function(core, "multi_scale_deformable_attention_v2"):
        return "original"
    return None


def _targets(model: nn.Module):
    """The modules :func:`patch_transformers` switches (or has switched) in `model`."""
    for module in model.modules():
        cls = type(module)
        if _is_patched_class(cls) or _core_function(module) is not None or (
                "forward" not in module.__dict__ and _class_kind(cls) is not None):
            yield module


def _why_not(module) -> str:
    cls = type(module)
    if "forward" in module.__dict__:
        return "its forward was replaced on the instance (by another kernel or patch)"
    if _CORE_ATTRIBUTE in module.__dict__:
        return (f"its {_CORE_ATTRIBUTE} is {module.__dict__[_CORE_ATTRIBUTE]!r}, not "
                "transformers' multi_scale_deformable_attention_v2")
    if not _from_transformers(cls):
        return "its class is not transformers' own (a subclass or a copy)"
    return "msdacore does not know how this class samples"


def _looks_deformable(module) -> bool:
    if type(module).__module__.startswith("msdacore."):
        return False  # msdacore's own modules
    return bool(_LOOKS_DEFORMABLE.search(type(module).__name__)) or (
        isinstance(getattr(module, "sampling_offsets", None), nn.Module)
        and isinstance(getattr(module, "attention_weights", None), nn.Module))


def _warn_unpatched(model: nn.Module, handled: set) -> None:
    """Warns about each deformable-attention-like module that is neither handled, nor
    the parent of a handled one, nor the parent of one warned about."""
    names = {id(m): n for n, m in model.named_modules()}
    covered = set()
    for name, module in model.named_modules():
        if id(module) in handled:
            parts = name.split(".") if name else []
            covered.update(".".join(parts[:i]) for i in range(len(parts) + 1))
    suspects = [(name, module) for name, module in model.named_modules()
                if name not in covered and _looks_deformable(module)]
    for name, module in suspects:
        inner = name + "." if name else ""
        if any(other.startswith(inner) and other != name for other, _ in suspects):
            continue  # a descendant is warned about: the one that samples
        cls = type(module)
        warnings.warn(
            f"msdacore.torch.patch_transformers: {names[id(module)] or '(the model)'} "
            f"({cls.__module__}.{cls.__qualname__}) looks like deformable attention but was "
            f"not switched to msdacore: {_why_not(module)}; it keeps computing with its own "
            "code", RuntimeWarning, stacklevel=3)


def patch_transformers(model: nn.Module) -> PatchReport:
    """Makes every deformable attention sampling of a Hugging Face transformers model
    compute with msdacore; returns a :class:`PatchReport` of what now does, per family
    (already patched modules included, so calling it twice is harmless and reports the
    same). Warns (``RuntimeWarning``) naming each deformable-attention-like module it
    could not switch.

    Example::

        from transformers import DeformableDetrForObjectDetection
        import msdacore.torch

        model = DeformableDetrForObjectDetection.from_pretrained("SenseTime/deformable-detr")
        report = msdacore.torch.patch_transformers(model)
        # {"deformable_detr": {"MultiScaleDeformableAttention.forward": 12}}
    """
    report, handled = PatchReport(), set()
    for module in model.modules():
        cls = type(module)
        if _is_patched_class(cls):
            report._add(cls._msdacore_base, cls._msdacore_replaced)
            handled.add(id(module))
            continue
        core = _core_function(module)
        if core is not None:
            if core == "original":
                module.__dict__[_CORE_ATTRIBUTE] = _call_multi_scale_deformable_attention_v2
            report._add(cls, f"{cls.__name__}.{_CORE_ATTRIBUTE}: "
                             "multi_scale_deformable_attention_v2")
            handled.add(id(module))
            continue
        if "forward" in module.__dict__:
            continue  # replaced on the instance: it would shadow the patched class
        patched = _patched_class(cls)
        if patched is not None:
            module.__class__ = patched
            report._add(cls, patched._msdacore_replaced)
            handled.add(id(module))
    _warn_unpatched(model, handled)
    return report


def unpatch_transformers(model: nn.Module) -> PatchReport:
    """Undoes :func:`patch_transformers`; returns a :class:`PatchReport` of what was
    restored."""
    report = PatchReport()
    for module in model.modules():
        cls = type(module)
        if _is_patched_class(cls):
            module.__class__ = cls._msdacore_base
            report._add(cls._msdacore_base, cls._msdacore_replaced)
        elif _core_function(module) == "patched":
            original = getattr(sys.modules.get(cls.__module__),
                               "multi_scale_deformable_attention_v2", None)
            if not _is_transformers_function(original, "multi_scale_deformable_attention_v2"):
                warnings.warn(f"msdacore.torch.unpatch_transformers: cannot find transformers' "
                              f"multi_scale_deformable_attention_v2 for {cls.__qualname__}; "
                              "it keeps computing with msdacore", RuntimeWarning, stacklevel=2)
                continue
            module.__dict__[_CORE_ATTRIBUTE] = original
            report._add(cls, f"{cls.__name__}.{_CORE_ATTRIBUTE}: "
                             "multi_scale_deformable_attention_v2")
    return report
