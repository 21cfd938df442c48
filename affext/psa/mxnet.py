"""MXNet .params files read without mxnet, and psa's ImageNet ResNet-38 mapped to affext's.

psa starts ResNet-38 from ilsvrc-cls_rna-a1_cls1000_ep-0001.params, which it converts with
mxnet (no longer installable on current Python). The file is MXNet's NDArray list format
(`mx.nd.save`), all little-endian:

    uint64 0x112 (list magic), uint64 0 (reserved)
    uint64 count, then `count` arrays, each:
        uint32 magic: 0xF993FAC9 (v2) or 0xF993FACA (v3, numpy shape semantics):
            int32 storage type (0 = dense), shape (uint32 ndim, int64 dims)
        or 0xF993FAC8 (v1): shape (uint32 ndim, int64 dims)
        or anything else (legacy files): that value is ndim, then ndim uint32 dims
        an array without dims (ndim 0; -1 in v3) ends here; otherwise
        int32 device type, int32 device id, int32 dtype flag (0 float32, 1 float64,
        2 float16, 3 uint8, 4 int32, 5 int8, 6 int64), then the elements, C order
    uint64 count of names, then each: uint64 length, bytes ("arg:<name>" or "aux:<name>")
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping

import numpy as np
import torch

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
DTYPES = {
    0: np.float32,
    1: np.float64,
    2: np.float16,
    3: np.uint8,
    4: np.int32,
    5: np.int8,
    6: np.int64,
}


class _Reader:
    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.pos, self.path = memoryview(data), 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError(
                f"{self.path} ends early (byte {len(self.data)}, needed {self.pos + n}): "
                "a truncated or not an MXNet .params file"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def shape(self, ndim: int, dim_format: str) -> tuple[int, ...]:
        if not 0 <= ndim <= 32:
            raise ValueError(f"{self.path}: an array with {ndim} dimensions; not a .params file")
        return tuple(int(d) for d in self.unpack(str(ndim) + dim_format)) if ndim else ()


def _read_array(r: _Reader, index: int) -> np.ndarray | None:
    (magic,) = r.unpack("I")
    if magic in (V2_MAGIC, V3_MAGIC):
        (stype,) = r.unpack("i")
        if stype != 0:
            raise ValueError(
                f"{r.path}: array {index} is sparse (storage type {stype}); only dense "
                "arrays are supported"
            )
        (ndim,) = r.unpack("i")
        if ndim < 0 or (ndim == 0 and magic == V2_MAGIC):
            return None
        shape = r.shape(ndim, "q")
    elif magic == V1_MAGIC:
        (ndim,) = r.unpack("I")
        if ndim == 0:
            return None
        shape = r.shape(ndim, "q")
    else:
        if magic == 0:
            return None
        shape = r.shape(magic, "I")
    r.unpack("ii")  # device type and id: the arrays are read onto the CPU
    (flag,) = r.unpack("i")
    if flag not in DTYPES:
        raise ValueError(
            f"{r.path}: array {index} has MXNet dtype flag {flag}; supported: "
            + ", ".join(f"{k} ({np.dtype(v).name})" for k, v in DTYPES.items())
        )
    dtype = np.dtype(DTYPES[flag]).newbyteorder("<")
    count = int(np.prod(shape)) if shape else 1
    raw = r.take(count * dtype.itemsize)
    # one copy: out of the file's buffer, into native byte order
    return np.array(np.frombuffer(raw, dtype=dtype), dtype=dtype.newbyteorder("=")).reshape(shape)


def read_params(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The arrays of an MXNet .params (NDArray list) file as {name: CPU tensor}.

    Names keep MXNet's "arg:" / "aux:" prefixes; a file saved without names gives keys
    "0", "1", ... Raises ValueError naming the file when it is not in that format.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MXNet weights file not found: {path}")
    with open(path, "rb") as f:
        r = _Reader(f.read(), path)
    if len(r.data) < 16 or r.unpack("Q")[0] != LIST_MAGIC:
        raise ValueError(
            f"{path} is not an MXNet .params file (its first 8 bytes are not the NDArray "
            "list magic 0x112)"
        )
    r.unpack("Q")  # reserved
    (count,) = r.unpack("Q")
    if count > len(r.data):
        raise ValueError(f"{path}: claims {count} arrays; not an MXNet .params file")
    arrays = [_read_array(r, i) for i in range(count)]
    (num_names,) = r.unpack("Q")
    if num_names not in (0, count):
        raise ValueError(f"{path}: {count} arrays but {num_names} names")
    names = [bytes(r.take(r.unpack("Q")[0])).decode("utf-8") for _ in range(num_names)]
    if not names:
        names = [str(i) for i in range(count)]
    return {n: torch.from_numpy(a) for n, a in zip(names, arrays) if a is not None}


# MXNet name (prefix stripped) of the ResNet-38 A1 model -> psa's / affext's parameter name.
_BLOCK = re.compile(
    r"^(?P<kind>res|bn)(?P<stage>\d)(?P<letter>[a-z])(?P<index>\d*)_(?P<branch>branch\w+?)_"
    r"(?P<param>weight|gamma|beta|moving_mean|moving_var|mean|var)$"
)
_FINAL_BN = re.compile(r"^bn7_(?P<param>gamma|beta|moving_mean|moving_var|mean|var)$")
_BN_PARAMS = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "mean": "running_mean",
    "moving_var": "running_var",
    "var": "running_var",
}


def _torch_name(mx_name: str) -> str | None:
    """psa's parameter name of an MXNet ResNet-38 parameter; None for the ImageNet classifier."""
    name = mx_name.split(":", 1)[1] if mx_name.startswith(("arg:", "aux:")) else mx_name
    if name.startswith("linear1000") or name.startswith("fc"):
        return None
    if name == "conv1a_weight":
        return "conv1a.weight"
    m = _FINAL_BN.match(name)
    if m:
        return f"bn7.{_BN_PARAMS[m['param']]}"
    m = _BLOCK.match(name)
    if m is None:
        raise ValueError(
            f"unexpected MXNet parameter {mx_name!r}: not a layer of psa's ResNet-38 "
            "(conv1a, res/bn<stage><block>_branch*, bn7, linear1000)"
        )
    block = f"b{m['stage']}" + (f"_{m['index']}" if m["index"] else "")
    if m["kind"] == "res":
        if m["param"] != "weight":
            raise ValueError(f"unexpected MXNet parameter {mx_name!r}: convolutions have no bias")
        return f"{block}.conv_{m['branch']}.weight"
    if m["param"] == "weight":
        raise ValueError(f"unexpected MXNet parameter {mx_name!r}")
    return f"{block}.bn_{m['branch']}.{_BN_PARAMS[m['param']]}"


def mxnet_to_resnet38(
    params: Mapping[str, torch.Tensor] | str | os.PathLike,
) -> dict[str, torch.Tensor]:
    """psa's ImageNet ResNet-38 (.params file or its arrays) as a state dict in psa's names.

    The names are those of psa's resnet38d.Net and affext's resnet38 backbone (conv1a.weight,
    b2.bn_branch2a.running_mean, ..., bn7.bias); the ImageNet classifier (linear1000) is
    dropped, as psa drops it. Load it with build_backbone("resnet38", weights=...) or
    psa's model.load_state_dict(..., strict=False).
    """
    if isinstance(params, (str, os.PathLike)):
        params = read_params(params)
    out: dict[str, torch.Tensor] = {}
    for mx_name, value in params.items():
        name = _torch_name(mx_name)
        if name is None:
            continue
        if name in out:
            raise ValueError(f"two MXNet parameters map to {name!r} (the second: {mx_name!r})")
        out[name] = value
    if not out:
        raise ValueError("no ResNet-38 parameters found in the MXNet file")
    return out
