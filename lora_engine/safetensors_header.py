"""The header of a safetensors file, read and checked without torch.

A safetensors file is an 8-byte little-endian header length N, N bytes of a JSON object
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the
tensor bytes, offsets relative to the end of the header. A file from outside (an imported
adapter, a base model's weights) is checked here before anything maps it: a pickle renamed to
`.safetensors`, a truncated file, a header nested 100,000 deep, two tensors sharing bytes, or a
shape whose bytes do not match its byte range each raise `HeaderError` saying which tensor and why.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from lora_engine.errors import LoraFleetInputError
from lora_engine.safe_json import DocumentError, loads

MAX_HEADER_BYTES = 100 * 1024 * 1024
# Bytes per element of every dtype the safetensors format names.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_NDIM = 8


class HeaderError(LoraFleetInputError):
    """A file that is not a well-formed safetensors file; the message says what is wrong in it."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets in the data section (after the header)
    end: int


def _tensor(name: str, info: object) -> TensorInfo:
    where = f"tensor {name[:80]!r}"
    if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
        raise HeaderError(f"{where} is not an object of dtype, shape and data_offsets")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise HeaderError(f"{where} has dtype {str(dtype)[:20]!r}; allowed: {', '.join(DTYPE_BYTES)}")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM
            and all(type(d) is int and d >= 0 for d in shape)):
        raise HeaderError(f"{where} has shape {str(shape)[:40]}; a shape is a list of at most {MAX_NDIM} "
                          "whole numbers >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise HeaderError(f"{where} has data_offsets {str(offsets)[:40]}; they are [begin, end] with "
                          "0 <= begin <= end")
    needed = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != needed:
        raise HeaderError(f"{where} has shape {shape} of {dtype}, which needs {needed} bytes, but its "
                          f"byte range holds {offsets[1] - offsets[0]}")
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Every tensor of the safetensors file at `path` by name, checked: a JSON header within the
    limits, known dtypes, byte ranges that match their shapes, lie inside the file and do not
    overlap. HeaderError says what is wrong; OSError if the file cannot be read."""
    path = Path(path)
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        if len(head) < 8:
            raise HeaderError("is not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > min(MAX_HEADER_BYTES, size - 8):
            raise HeaderError("is not a safetensors file (bad header length: corrupt, truncated, or "
                              "another format such as pickle)")
        raw = fh.read(n)
    try:
        header = loads(raw, what="its header", max_depth=3)
    except DocumentError as exc:
        raise HeaderError(f"is not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise HeaderError("is not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError("has __metadata__ that is not an object of strings")
    try:
        tensors = {name: _tensor(name, info) for name, info in header.items()}
    except HeaderError as exc:
        raise HeaderError(f"is corrupt ({exc})") from None
    data = size - 8 - n
    end = 0
    for name, t in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if t.end > data:
            raise HeaderError(f"is truncated or corrupt (tensor {name[:80]!r} lies outside the file)")
        if t.begin < end and t.end > t.begin:
            raise HeaderError(f"is corrupt (tensor {name[:80]!r} overlaps the bytes of another tensor)")
        end = max(end, t.end)
    return tensors
