"""The one road from Python to the core: every front end (msdacore.ms_deform_attn and
its backward, msdacore.torch's operators) calls forward() / backward() here with its
framework adapter (_frameworks.py), which allocates the outputs and CUDA scratch.

One call: the inputs prepared by the adapter (CUDA: index arrays copied to the host and
the stream chosen), their capsules handed to the core's prepare(), which validates the
call once and gives the output shapes (and on CUDA the workspace size: scratch comes from
the framework's allocator), outputs from the framework, the run of the prepared call
(which checks only the outputs), then on CUDA the framework's current stream is made to
wait for the call's stream when they differ; the results come back as the caller's array
kind.
"""

from __future__ import annotations

from . import _arrays, _core

# The operator's inputs, by name, in their order in every front end.
FORWARD_INPUTS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
                  "attention_weights")
BACKWARD_INPUTS = FORWARD_INPUTS + ("grad_output",)
_GRADIENTS = ("grad_value", "grad_sampling_locations", "grad_attention_weights")
_DEFAULT_OPTIONS = _core.Options()


def op_options(align_corners=False, deterministic=False, mode="bilinear", points_per_level=None):
    """The operator's options as one msdacore.Options (the core checks each argument's type
    and value); the default options are one shared object."""
    if (align_corners is False and deterministic is False and mode == "bilinear"
            and points_per_level is None):
        return _DEFAULT_OPTIONS
    return _core.Options(align_corners=align_corners, mode=mode,
                         points_per_level=points_per_level, deterministic=deterministic)


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

    def capsules(self, start, stop):
        """Capsules of the arguments start .. stop - 1."""
        fw, export = self.fw, self.export
        arrays, names = self.arrays[start:stop], self.names[start:stop]
        if export is None:
            return fw.capsule_list(arrays, names)
        return [fw.capsule(a, n, export if _arrays.is_cuda(a) else None)
                for a, n in zip(arrays, names)]

    def workspace(self, prepared, backward):
        """(keep-alive, address, bytes) of caller-owned scratch for the prepared call, or
        (None, 0, 0). Frameworks without an allocator leave the scratch to the core's
        default allocator."""
        nbytes = prepared.workspace_size(backward)
        if nbytes == 0 or not self.fw.owns_cuda_memory:
            return None, 0, 0
        buffer, address = self.fw.workspace(nbytes, self.arrays[0], self.stream)
        return buffer, address, nbytes

    def outputs(self, shapes, backward):
        """The outputs of the prepared (validated) call, of `shapes`, from the framework."""
        a = self.arrays
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
    call = _Call(fw, FORWARD_INPUTS, (value, spatial_shapes, level_start_index,
                                       sampling_locations, attention_weights), stream)
    prepared, shapes = _core.prepare(*call.capsules(0, 5), options, call.stream, False)
    keep, address, nbytes = (call.workspace(prepared, False) if call.cuda else (None, 0, 0))
    (out,) = call.outputs(shapes, backward=False)
    _core.forward(prepared, *fw.capsule_list((out,), ("output",)), address, nbytes)
    result = call.finish([out], value)[0] if call.cuda else fw.wrap(out, value)
    del keep  # after finish(): the framework's stream has been made to wait for the call
    return result


def backward(fw, value, spatial_shapes, level_start_index, sampling_locations,
             attention_weights, grad_output, *, options, stream=None):
    """(grad_value, grad_sampling_locations, grad_attention_weights) of `fw`'s kind;
    arguments as msdacore.ms_deform_attn_backward, `options` from op_options()."""
    call = _Call(fw, BACKWARD_INPUTS, (value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights, grad_output),
                 stream)
    # The five inputs are validated before grad_output is exported or anything allocated.
    prepared, shapes = _core.prepare(*call.capsules(0, 5), options, call.stream, True)
    keep, address, nbytes = (call.workspace(prepared, True) if call.cuda else (None, 0, 0))
    outs = call.outputs(shapes, backward=True)
    if call.export is None:  # grad_output and the gradients exported in one go
        capsules = fw.capsule_list([call.arrays[5], *outs], ("grad_output",) + _GRADIENTS)
    else:
        capsules = [*call.capsules(5, 6), *fw.capsule_list(outs, _GRADIENTS)]
    _core.backward(prepared, *capsules, address, nbytes)
    result = tuple(call.finish(outs, value) if call.cuda else (fw.wrap(o, value) for o in outs))
    del keep  # after finish(), as in forward()
    return result
