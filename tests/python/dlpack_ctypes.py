"""The DLPack structs in ctypes, for tests that build capsules by hand (producers that lie
about their device, or that export a broken tensor), and a producer that refuses to export."""

from __future__ import annotations

import ctypes


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def legacy_capsule(managed: DLManagedTensor):
    """A legacy "dltensor" capsule of `managed` (which the caller keeps alive)."""
    return _capsule_new(ctypes.addressof(managed), b"dltensor", None)


class RefusingProducer:
    """An array-like on DLPack device `device` whose __dlpack__ raises `error`; cpu() gives
    `host` (what a framework's device array offers)."""

    def __init__(self, error, device=(1, 0), host=None):
        self.error, self.device, self.host = error, device, host

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, **kwargs):
        raise self.error

    def cpu(self):
        return self.host
