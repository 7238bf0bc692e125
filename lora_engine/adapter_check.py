"""Is a folder a usable adapter? Answered without torch, at the door (`init_from` by path).

Reads `adapter_config.json` and only the header of `adapter_model.safetensors`: a safetensors
file starts with an 8-byte little-endian header length and a JSON header naming each tensor's
dtype, shape and byte range. A pickle renamed to `.safetensors` (or a truncated file) fails that
check before anything loads it; a folder holding only `adapter_model.bin` (pickle) is refused.
The engine still checks every tensor's shape against the model when it loads the adapter.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

from lora_engine.adapter_folder import CONFIG_NAME, WEIGHTS_NAME, peft_type_problem
from lora_engine.errors import AdapterError
from lora_engine.model_ref import MODEL_ALIASES, alias_of, is_folder_name

MAX_HEADER_BYTES = 100 * 1024 * 1024
# An adapter's JSON files (adapter_config.json, lorafleet.json) are a few kilobytes; this bounds
# what is read of one from outside.
MAX_DOCUMENT_BYTES = 1024 * 1024


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a well-formed safetensors file (None: it is)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "is not a safetensors file (shorter than its 8-byte header length)"
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > min(MAX_HEADER_BYTES, size - 8):
            return ("is not a safetensors file (bad header length: corrupt, truncated, or another format "
                    "such as pickle)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError):
            return "is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data):
            return f"is truncated or corrupt (tensor {name[:80]!r} lies outside the file)"
    return None


def read_json_document(path: Path, max_bytes: int = MAX_DOCUMENT_BYTES) -> dict[str, Any]:
    """The JSON object in the regular file `path` (not followed if it is a symlink), at most
    `max_bytes` long, parsed with `safe_json`'s limits; AdapterError naming the file otherwise."""
    from lora_engine.safe_json import DocumentError, loads

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
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        problems.append(f"{what}: {WEIGHTS_NAME} is missing" + (
            "; adapter_model.bin (pickle) is refused: save the adapter as safetensors" if pickled else ""))
    else:
        why = safetensors_problem(weights)
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
