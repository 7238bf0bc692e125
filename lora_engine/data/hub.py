"""Optional fallback: load a task's rows from the Hugging Face hub when the data folder lacks them.

The project runs offline from a local data folder (`LORAFLEET_DATA_DIR`); `datasets` is not a
dependency. This module imports it lazily and only when the local files are missing, so an offline
machine gets one clear error naming the missing file and the two ways out, never a half-loaded run.
Rows come back in the local files' shape (GLUE field names, E2E `mr`/`ref`), so everything after
loading is the same code path whatever the source.
"""

from __future__ import annotations

import os
from pathlib import Path

from lora_engine.errors import LoraFleetInputError

GLUE_HUB_ID = "nyu-mll/glue"
E2E_HUB_ID = "tuetschek/e2e_nlg"
# Our `validation` split name -> the hub's name, where they differ.
_HUB_SPLITS = {("mnli", "validation"): "validation_matched"}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def load_from_hub(task: str, split: str, missing: Path) -> list[dict]:
    """Rows of `task`/`split` from the hub, shaped like the local files; a clear error otherwise."""
    where = (
        f"the data folder lacks {missing} (set LORAFLEET_DATA_DIR to a folder laid out as "
        "glue/<task>/{train,validation}.jsonl and e2e/{train,validation}.csv)"
    )
    if hub_offline():
        raise LoraFleetInputError(f"{where}, and HF_HUB_OFFLINE=1 forbids loading {task!r} from the hub")
    try:
        import datasets  # optional dependency, imported only on this path
    except ImportError:
        raise LoraFleetInputError(
            f"{where}; to load {task!r} from the Hugging Face hub instead, install it: pip install datasets"
        ) from None
    try:
        if task == "e2e":
            ds = datasets.load_dataset(E2E_HUB_ID, split=split)
            return [{"mr": r["meaning_representation"], "ref": r["human_reference"]} for r in ds]
        ds = datasets.load_dataset(GLUE_HUB_ID, task, split=_HUB_SPLITS.get((task, split), split))
        return [dict(r) for r in ds]
    except Exception as exc:  # network, auth, unknown config: one clear message with the cause
        raise LoraFleetInputError(f"{where}; loading {task!r}/{split} from the hub failed: {exc}") from exc
