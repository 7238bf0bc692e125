"""Is a folder a usable adapter? Answered without torch, at the door (`init_from` by path,
`adapter import`) and again where the engine reads an adapter's weights (`adapters.io`).

Reads `adapter_config.json` (through `safe_json`; its rank, alpha and dropout must be numbers a
spec could hold) and `adapter_model.safetensors`: its header through `safetensors_header.read_header`
(a pickle renamed to `.safetensors`, a truncated file, overlapping byte ranges or a shape larger
than its bytes are refused before anything maps the file), then its floating-point tensors'
bytes, which must all be finite: an adapter holding NaN or infinity would make every output NaN.
A folder holding only `adapter_model.bin` (pickle) is refused. The engine still checks every
tensor's shape against the model when it loads the adapter.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import Any

from lora_engine.adapters.folder import CONFIG_NAME, WEIGHTS_NAME, lora_numbers_problem, peft_type_problem
from lora_engine.errors import AdapterError
from lora_engine.model_ref import MODEL_ALIASES, alias_of, is_folder_name
from lora_engine.safe_json import DocumentError, loads
from lora_engine.safetensors_header import HeaderError, TensorInfo, read_header

# A float is NaN or infinite exactly when every bit of its exponent is set (float8 e4m3 has no
# infinity; its NaN is every bit but the sign). dtype -> (unsigned view, exponent mask).
_EXPONENT_BITS = {"F64": ("<u8", 0x7FF0000000000000), "F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00),
                  "BF16": ("<u2", 0x7F80), "F8_E5M2": ("u1", 0x7C), "F8_E4M3": ("u1", 0x7F)}
_CHUNK = 1 << 22  # elements checked at a time: bounded memory for a tensor of any size
# An adapter's JSON files (adapter_config.json, lorafleet.json) are a few kilobytes; this bounds
# what is read of one from outside.
MAX_DOCUMENT_BYTES = 1024 * 1024


def nonfinite_tensor(path: str | os.PathLike, tensors: dict[str, TensorInfo]) -> str | None:
    """The name of the first floating-point tensor of the safetensors file `path` (checked by
    `read_header`, which gave `tensors`) holding a NaN or an infinity; None when all are finite."""
    import numpy as np

    with open(path, "rb") as fh:
        start = 8 + struct.unpack("<Q", fh.read(8))[0]  # the tensor bytes follow the header
    for name, t in sorted(tensors.items(), key=lambda item: item[1].begin):
        if t.dtype not in _EXPONENT_BITS or t.end == t.begin:
            continue
        view, mask = _EXPONENT_BITS[t.dtype]
        values = np.memmap(path, dtype=view, mode="r", offset=start + t.begin,
                           shape=((t.end - t.begin) // np.dtype(view).itemsize,))
        for at in range(0, len(values), _CHUNK):
            if np.any((values[at:at + _CHUNK] & mask) == mask):
                return name
    return None


def weights_problem(path: str | os.PathLike) -> str | None:
    """Why the safetensors file `path` cannot be an adapter's weights (None: it can): not a
    well-formed safetensors file, or a tensor holding NaN or infinity (named)."""
    try:
        tensors = read_header(path)
    except HeaderError as exc:
        return str(exc)
    bad = nonfinite_tensor(path, tensors)
    if bad is None:
        return None
    return f"holds NaN or infinite values in tensor {bad[:80]!r}; every weight of an adapter must be finite"


def check_weights(path: str | os.PathLike) -> None:
    """The engine's check before it maps an adapter's weights: AdapterError for what
    `weights_problem` refuses."""
    why = weights_problem(path)
    if why:
        raise AdapterError(f"{path} {why}")


def read_json_document(path: Path, max_bytes: int = MAX_DOCUMENT_BYTES) -> dict[str, Any]:
    """The JSON object in the regular file `path` (not followed if it is a symlink), at most
    `max_bytes` long, parsed with `safe_json`'s limits; AdapterError naming the file otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise AdapterError(f"{path.name} cannot be read ({os.strerror(exc.errno or 0)})") from None
    with open(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise AdapterError(f"{path.name} is not a regular file")
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise AdapterError(f"{path.name} is larger than {max_bytes} bytes; an adapter's JSON file is a few "
                           "kilobytes")
    try:
        document = loads(raw, what=path.name)
    except DocumentError as exc:
        raise AdapterError(str(exc)) from None
    if not isinstance(document, dict):
        raise AdapterError(f"{path.name} is not a JSON object")
    return document


def adapter_folder_problems(folder: str | Path, base_model: str | None, *,
                            what: str = "init_from") -> list[str]:
    """Every reason `folder` cannot start a job on `base_model` (empty list: it can); each
    message starts with `what` (the option or command that named the folder)."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        return [f"{what}: {str(folder)!r} is not an adapter folder (no {CONFIG_NAME})"]
    try:
        config = read_json_document(config_path)
    except AdapterError as exc:
        return [f"{what}: {exc}"]
    problems = []
    peft_type = peft_type_problem(config)
    if peft_type:
        problems.append(f"{what}: {peft_type}")
    numbers = lora_numbers_problem(config)
    if numbers:
        problems.append(f"{what}: {CONFIG_NAME}: {numbers}")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        problems.append(f"{what}: {WEIGHTS_NAME} is missing" + (
            "; adapter_model.bin (pickle) is refused: save the adapter as safetensors" if pickled else ""))
    else:
        why = weights_problem(weights)
        if why:
            problems.append(f"{what}: {WEIGHTS_NAME} {why}")
    # An adapter names a shipped alias by its hub id (model_ref.ALIAS_HUB_IDS): compare aliases.
    # A folder has many spellings: not compared by name (the load checks every tensor's shape).
    recorded = config.get("base_model_name_or_path")
    recorded = alias_of(recorded) if isinstance(recorded, str) else recorded
    comparable = isinstance(recorded, str) and recorded and base_model and (
        (recorded in MODEL_ALIASES) == (base_model in MODEL_ALIASES)) and not (
        is_folder_name(recorded) or is_folder_name(base_model))
    if comparable and recorded != base_model:
        problems.append(f"{what}: the adapter was trained on base model {recorded[:120]!r}, "
                        f"the job uses {base_model!r}")
    return problems
