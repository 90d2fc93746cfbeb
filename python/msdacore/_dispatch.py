"""The one road from Python to the core: every front end (msdacore.ms_deform_attn and
its backward, msdacore.torch's operators) calls forward() / backward() here with its
framework adapter (_frameworks.py), which allocates the outputs and CUDA scratch.

One call: the inputs prepared by the adapter (CUDA: index arrays copied to the host and
the stream chosen; then the core's workspace query, which validates the inputs before
anything is allocated, and scratch from the framework's allocator), the input capsules,
outputs from the framework, one core call (which validates everything), then on CUDA the
framework's current stream is made to wait for the call's stream when they differ; the
results come back as the caller's array kind.
"""

from __future__ import annotations

import math

from . import _arrays, _core

_INT64_MAX = 2**63 - 1
_FORWARD_INPUTS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
                   "attention_weights")
_BACKWARD_INPUTS = _FORWARD_INPUTS + ("grad_output",)
_GRADIENTS = ("grad_value", "grad_sampling_locations", "grad_attention_weights")


def output_shapes(value, sampling_locations, attention_weights, backward):
    """Shapes of the outputs (forward: [(N, Lq, M*D)]; backward: the three gradients, in the
    layout of sampling_locations / attention_weights) as the inputs imply them. Where the
    inputs' shapes disagree or their sizes pass int64, (0,) placeholders: the core
    validates the inputs before any output and raises its error for them."""
    count = 3 if backward else 1
    try:
        N, S, M, D = value.shape
        loc = tuple(sampling_locations.shape)  # (N, Lq, M, [L,] P, 2)
        consistent = (len(loc) in (5, 6) and loc[0] == N and loc[2] == M
                      and tuple(attention_weights.shape) == loc[:-1])
    except (AttributeError, TypeError, ValueError):  # no shape, or the wrong rank
        return [(0,)] * count
    if not consistent:
        return [(0,)] * count
    Lq = loc[1]
    if not backward:
        if M * D > _INT64_MAX or N * Lq * M * D > _INT64_MAX:
            return [(0,)]
        return [(N, Lq, M * D)]
    if N * S * M * D > _INT64_MAX or math.prod(loc) > _INT64_MAX:
        return [(0,)] * 3
    return [(N, S, M, D), loc, loc[:-1]]


_MODES = ("bilinear", "discrete")
_DEFAULT_OPTIONS = (False, False, "bilinear", None)


def op_options(align_corners, deterministic=False, mode="bilinear", points_per_level=None):
    """The operator's options as the core takes them: (align_corners, deterministic, mode,
    points_per_level as a list of ints or None), checked for their Python types."""
    if (align_corners is False and deterministic is False and mode == "bilinear"
            and points_per_level is None):
        return _DEFAULT_OPTIONS  # the common case, without the checks below
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, \"bilinear\" or \"discrete\", got "
                        f"{type(mode).__name__}")
    if mode not in _MODES:
        raise ValueError(f"mode must be \"bilinear\" or \"discrete\", got {mode!r}")
    counts = None
    if points_per_level is not None:
        counts = _arrays.as_counts(points_per_level)
    return (_arrays.as_flag(align_corners, "align_corners"),
            _arrays.as_flag(deterministic, "deterministic"), mode, counts)


class _Call:
    """The prepared arguments, device and stream of one call."""

    __slots__ = ("fw", "names", "arrays", "cuda", "device", "current", "stream", "export")

    def __init__(self, fw, names, arrays, stream):
        self.fw, self.names = fw, names
        kind, self.device = _arrays.device_of(arrays[0])
        self.cuda = kind == _arrays.KDL_CUDA
        if self.cuda:  # the core reads the index arrays on the host
            arrays = list(arrays)
            arrays[1], arrays[2] = fw.to_host(arrays[1]), fw.to_host(arrays[2])
        self.arrays = [fw.prepare(a, n) for a, n in zip(arrays, names)]
        self.current = self.export = None
        self.stream = 0
        if self.cuda:
            self.current = fw.current_stream(self.device)
            if stream is not None:
                self.stream = _arrays.stream_handle(stream)
            elif self.current is not None:
                self.stream = self.current
            else:
                self.stream = _arrays.LEGACY_DEFAULT_STREAM
            # Off the framework's current stream, CUDA inputs are exported for the call's
            # stream (DLPack's consumer stream): their producer orders their writes first.
            if self.stream != self.current:
                self.export = self.stream

    def capsules(self, count):
        """Capsules of the first `count` arguments."""
        fw, export = self.fw, self.export
        if export is None:
            return fw.capsule_list(self.arrays[:count], self.names)
        return [fw.capsule(a, n, export if _arrays.is_cuda(a) else None)
                for a, n in zip(self.arrays[:count], self.names)]

    def workspace(self, size_fn, options):
        """(keep-alive, address, bytes) of caller-owned scratch, or (None, 0, 0).

        On CUDA the size query comes first, before anything is allocated: it validates
        the inputs as the call would (a bad CUDA call fails with the core's error, not an
        allocator's). Frameworks without an allocator leave the scratch to the core's
        default allocator."""
        nbytes = size_fn(*self.capsules(5), options)
        if nbytes == 0 or not self.fw.owns_cuda_memory:
            return None, 0, 0
        buffer, address = self.fw.workspace(nbytes, self.arrays[0], self.stream)
        return buffer, address, nbytes

    def outputs(self, backward):
        a = self.arrays
        shapes = output_shapes(a[0], a[3], a[4], backward)
        likes = (a[0], a[3], a[4]) if backward else (a[0],)  # each gradient in its input's dtype
        try:
            return [self.fw.empty(s, like, self.stream) for s, like in zip(shapes, likes)]
        except (MemoryError, ValueError) as error:  # NumPy: "array is too big"
            names = _GRADIENTS if backward else ("output",)
            sizes = ", ".join(f"{n} {s}" for n, s in zip(names, shapes))
            raise MemoryError(f"msdacore: the outputs cannot be allocated ({sizes}): "
                              f"{error}") from None

    def finish(self, outs, like):
        if self.cuda:
            if self.current is not None and self.current != self.stream:
                _core.cuda_stream_wait(self.device, self.current, self.stream)
            elif not self.fw.owns_cuda_memory:
                # DeviceArray outputs are consumed on any stream: wait for the data.
                _core.cuda_synchronize(self.device, self.stream)
        return [self.fw.wrap(o, like) for o in outs]


def forward(fw, value, spatial_shapes, level_start_index, sampling_locations,
            attention_weights, *, options, stream=None):
    """output (N, Lq, M*D) of `fw`'s kind; arguments as msdacore.ms_deform_attn, `options`
    from op_options()."""
    call = _Call(fw, _FORWARD_INPUTS, (value, spatial_shapes, level_start_index,
                                       sampling_locations, attention_weights), stream)
    keep, address, nbytes = (call.workspace(_core.forward_workspace_size, options)
                             if call.cuda else (None, 0, 0))
    inputs = call.capsules(5)
    (out,) = call.outputs(backward=False)
    _core.forward(*inputs, *fw.capsule_list((out,), ("output",)), options, call.stream, address,
                  nbytes)
    result = call.finish([out], value)[0] if call.cuda else fw.wrap(out, value)
    del keep  # after finish(): the framework's stream has been made to wait for the call
    return result


def backward(fw, value, spatial_shapes, level_start_index, sampling_locations,
             attention_weights, grad_output, *, options, stream=None):
    """(grad_value, grad_sampling_locations, grad_attention_weights) of `fw`'s kind;
    arguments as msdacore.ms_deform_attn_backward, `options` from op_options()."""
    call = _Call(fw, _BACKWARD_INPUTS, (value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights, grad_output),
                 stream)
    keep, address, nbytes = (call.workspace(_core.backward_workspace_size, options)
                             if call.cuda else (None, 0, 0))
    inputs = call.capsules(6)
    outs = call.outputs(backward=True)
    _core.backward(*inputs, *fw.capsule_list(outs, _GRADIENTS),
                   options, call.stream, address, nbytes)
    result = tuple(call.finish(outs, value) if call.cuda else (fw.wrap(o, value) for o in outs))
    del keep  # after finish(), as in forward()
    return result
