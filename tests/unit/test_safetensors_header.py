"""The torch-free safetensors header check every file from outside passes before it is mapped."""

from __future__ import annotations

import json
import struct

import pytest

from lora_engine.safetensors_header import HeaderError, TensorInfo, read_header


def _file(tmp_path, header: dict | bytes, data: bytes = b"\0" * 64):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_a_file_written_by_safetensors_reads_back_whole(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.float16)}, str(path),
              metadata={"format": "pt"})
    assert read_header(path) == {"a": TensorInfo("F32", (2, 3), 0, 24), "b": TensorInfo("F16", (4,), 24, 32)}


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(("header", "says"), [
    ({"a": F32_2, "b": {**F32_2, "data_offsets": [4, 12]}}, "tensor 'b' overlaps the bytes of another"),
    ({"a": {**F32_2, "shape": [1_000_000]}}, "needs 4000000 bytes, but its byte range holds 8"),
    ({"a": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}, "tensor 'a' lies outside the file"),
    ({"a": {**F32_2, "dtype": "OBJ"}}, "has dtype 'OBJ'"),
    ({"a": {**F32_2, "shape": [True, 2]}}, "a shape is a list of at most 8 whole numbers"),
    ({"a": {**F32_2, "data_offsets": [8, 0]}}, "0 <= begin <= end"),
    ({"__metadata__": {"format": ["pt"]}}, "__metadata__ that is not an object of strings"),
    (b'{"a":' + b"[" * 100_000, "nests deeper than 3 levels"),
    (b'{"a": 1, "a": 2}', "key 'a' appears twice"),
    (b"\x80\x02}q\x00", "is not UTF-8 text"),
])
def test_a_malformed_header_is_refused_with_the_tensor_and_the_reason(tmp_path, header, says):
    with pytest.raises(HeaderError) as err:
        read_header(_file(tmp_path, header))
    assert says in str(err.value)


def test_a_pickle_or_a_truncated_file_is_not_read_as_one(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\0" * 40)  # a pickle's opening bytes: a huge "header length"
    with pytest.raises(HeaderError, match="bad header length"):
        read_header(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(HeaderError, match="shorter than its 8-byte header length"):
        read_header(path)
