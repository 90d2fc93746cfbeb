"""The one road from Python to the core: every front end (msdacore.ms_deform_attn and
its backward, msdacore.torch's operators) calls forward() / backward() here with its
framework adapter (_frameworks.py), which allocates the outputs and CUDA scratch.

One call: index arrays to the host, input capsules (exported for the call's stream),
outputs from the framework, CUDA scratch from the framework when it has an allocator,
one core call (which validates everything), then the framework's current stream is made to
wait for the call's stream when they differ, and results come back as the caller's kind.
"""

from __future__ import annotations

import math

from . import _arrays, _core

_INT64_MAX = 2**63 - 1

_INPUTS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
           "attention_weights")


def _shape(array, rank):
    """`array`'s shape when it has `rank` dimensions, else None (the core reports it)."""
    shape = getattr(array, "shape", None)
    if shape is None or len(shape) != rank:
        return None
    return tuple(int(s) for s in shape)


def output_shapes(value, sampling_locations, attention_weights, backward):
    """Shapes of the outputs (forward: [(N, Lq, M*D)]; backward: the three gradients) as
    the inputs imply them. Where the inputs' shapes disagree, (0,) placeholders: the core
    validates the inputs before any output and raises its error for them."""
    v, loc = _shape(value, 4), _shape(sampling_locations, 6)
    attn = _shape(attention_weights, 5)
    if v is None or loc is None or attn != loc[:5] or (loc[0], loc[2]) != (v[0], v[2]):
        return [(0,)] * (3 if backward else 1)
    N, S, M, D = v
    _, Lq, _, L, P, _ = loc
    shapes = [(N, Lq, M * D)] if not backward else [(N, S, M, D), (N, Lq, M, L, P, 2),
                                                     (N, Lq, M, L, P)]
    if any(max(s) > _INT64_MAX or math.prod(s) > _INT64_MAX for s in shapes):
        # sizes past int64: the core's size error, not the allocator's
        return [(0,)] * len(shapes)
    return shapes


class _Call:
    """The device, stream and converted inputs of one call."""

    def __init__(self, fw, arrays, stream):
        self.fw = fw
        value = arrays["value"]
        kind, self.device = _arrays.device_of(value)
        self.cuda = kind == _arrays.KDL_CUDA
        self.arrays = {}
        for name, array in arrays.items():
            if name in ("spatial_shapes", "level_start_index"):
                array = fw.to_host(array)
            else:
                array = fw.adopt(array, name)
            self.arrays[name] = _arrays.as_array(array, name)
        self.current = fw.current_stream(self.device) if self.cuda else None
        if not self.cuda:
            self.stream = 0
        elif stream is None:
            self.stream = (self.current if self.current is not None
                           else _arrays.LEGACY_DEFAULT_STREAM)
        else:
            self.stream = _arrays.stream_handle(stream)
        # Inputs written on another stream are ordered before this call's stream by their
        # producer (DLPack's consumer stream) unless the call runs on the current stream.
        self.export_stream = None if (not self.cuda or self.stream == self.current) else self.stream

    def capsules(self, names):
        return [self.fw.capsule(self.arrays[n], n,
                                self.export_stream if _arrays.is_cuda(self.arrays[n]) else None)
                for n in names]

    def outputs(self, shapes, like):
        return [self.fw.empty(s, like, self.stream) for s in shapes]

    def workspace(self, size_fn, **flags):
        """(keep-alive, address, bytes) of caller-owned scratch, or (None, 0, 0).

        On CUDA the size query comes first, before anything is allocated: it validates
        the inputs as the call would (so a bad CUDA call fails with the core's error, not
        an allocator's). Frameworks without an allocator leave the scratch to the core's
        default allocator."""
        if not self.cuda:
            return None, 0, 0
        nbytes = size_fn(*self.capsules(_INPUTS), **flags)
        if nbytes == 0 or not self.fw.owns_cuda_memory:
            return None, 0, 0
        buffer, address = self.fw.workspace(nbytes, self.arrays["value"], self.stream)
        return buffer, address, nbytes

    def finish(self, outs):
        if self.cuda:
            if self.current is not None and self.current != self.stream:
                _core.cuda_stream_wait(self.device, self.current, self.stream)
            elif not self.fw.owns_cuda_memory:
                # DeviceArray outputs are consumed on any stream: wait for the data.
                _core.cuda_synchronize(self.device, self.stream)
        like = self.arrays["value"]
        return [self.fw.wrap(o, like) for o in outs]


def forward(fw, value, spatial_shapes, level_start_index, sampling_locations,
            attention_weights, *, align_corners, stream=None):
    """output (N, Lq, M*D) of `fw`'s kind; arguments as msdacore.ms_deform_attn."""
    call = _Call(fw, dict(value=value, spatial_shapes=spatial_shapes,
                          level_start_index=level_start_index,
                          sampling_locations=sampling_locations,
                          attention_weights=attention_weights), stream)
    keep, address, nbytes = call.workspace(_core.forward_workspace_size,
                                           align_corners=align_corners)
    inputs = call.capsules(_INPUTS)
    a = call.arrays
    shapes = output_shapes(a["value"], a["sampling_locations"], a["attention_weights"],
                           backward=False)
    (out,) = call.outputs(shapes, a["value"])
    _core.forward(*inputs, call.fw.capsule(out, "output"), align_corners, call.stream,
                  address, nbytes)
    del keep  # released on the framework's stream, after the work enqueued there
    return call.finish([out])[0]


def backward(fw, value, spatial_shapes, level_start_index, sampling_locations,
             attention_weights, grad_output, *, align_corners, deterministic, stream=None):
    """(grad_value, grad_sampling_locations, grad_attention_weights) of `fw`'s kind;
    arguments as msdacore.ms_deform_attn_backward."""
    call = _Call(fw, dict(value=value, spatial_shapes=spatial_shapes,
                          level_start_index=level_start_index,
                          sampling_locations=sampling_locations,
                          attention_weights=attention_weights, grad_output=grad_output), stream)
    keep, address, nbytes = call.workspace(_core.backward_workspace_size,
                                           align_corners=align_corners,
                                           deterministic=deterministic)
    inputs = call.capsules(_INPUTS + ("grad_output",))
    a = call.arrays
    shapes = output_shapes(a["value"], a["sampling_locations"], a["attention_weights"],
                           backward=True)
    outs = call.outputs(shapes, a["value"])
    names = ("grad_value", "grad_sampling_locations", "grad_attention_weights")
    _core.backward(*inputs, *(call.fw.capsule(o, n) for o, n in zip(outs, names)),
                   align_corners, deterministic, call.stream, address, nbytes)
    del keep
    return tuple(call.finish(outs))
