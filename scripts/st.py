"""Minimal safetensors reading and writing with numpy, including BF16 and U8.

numpy has no bfloat16, so BF16 is stored from float32 by rounding to nearest even
on the top 16 bits, and read back by shifting into the top half of a float32.
The writer streams: it takes (name, dtype, shape, producer) and calls each producer
only when its bytes are written, so a multi-GB checkpoint never sits in memory. A
producer may return a list of row chunks (each a callable with a `len`), for a tensor
too large to hold at once.
"""
import json
import os
import struct

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "U8": np.uint8}
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1}


def to_bf16_bits(a):
    a = np.ascontiguousarray(a, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def encode(a, dtype):
    if dtype == "BF16":
        return to_bf16_bits(a).tobytes()
    return np.ascontiguousarray(a, dtype=DTYPES[dtype]).astype("<" + np.dtype(DTYPES[dtype]).str[1:]).tobytes()


def itemsize(dtype):
    return ITEMSIZE[dtype]


def write(path, entries, metadata=None):
    """entries: list of (name, dtype, shape, producer() -> float array)."""
    header = {}
    offset = 0
    for name, dtype, shape, _ in entries:
        n = int(np.prod(shape)) * itemsize(dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = metadata or {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dtype, shape, produce in entries:
            a = produce()
            if isinstance(a, list):  # row chunks of one large tensor, written one by one
                assert sum(len(c) for c in a) == shape[0], (name, shape)
                for chunk in a:
                    f.write(encode(np.asarray(chunk()), dtype))
                continue
            a = np.asarray(a)
            assert a.shape == tuple(shape), (name, a.shape, shape)
            f.write(encode(a, dtype))
    os.replace(tmp, path)


def read(path):
    """Returns {name: array} for every tensor of one safetensors file: float64, except U8
    (packed ternary weights), which stays uint8."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = data[base + a : base + b]
        dtype = info["dtype"]
        if dtype not in ITEMSIZE:
            raise ValueError(f"{path}: tensor {name}: dtype {dtype} is not one of {sorted(ITEMSIZE)}")
        if dtype == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype="<" + np.dtype(DTYPES[dtype]).str[1:])
        arr = arr.reshape(info["shape"])
        out[name] = arr.copy() if dtype == "U8" else arr.astype(np.float64)
    return out


def read_checkpoint(folder):
    """All tensors of a checkpoint folder: model.safetensors or a sharded index."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for name in files:
        out.update(read(os.path.join(folder, name)))
    return out
