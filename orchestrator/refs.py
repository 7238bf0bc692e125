"""What a reference a user gives names, decided by its spelling alone, once, at the door.

Nothing downstream guesses: a service resolves the reference to an id (the registry's columns carry
it: `jobs.dataset_id`, `jobs.init_from_adapter_id`, `jobs.base_adapter_id`) or to a confined path
(`orchestrator.paths`), and the worker reads the columns. Never is a file system looked at to
decide which it is (a file named like an id, or a hub id that happens to be a folder in whatever
folder the command runs in, would otherwise change the meaning).

| option                    | an id when spelled as one            | otherwise                         |
|---------------------------|--------------------------------------|-----------------------------------|
| --dataset, batch `dataset`| the tenant's data set                | a JSONL file (uploaded)           |
| --init-from               | the tenant's adapter                 | an adapter folder (registered)    |
| --base-model              | the tenant's own full fine-tune      | an alias; a folder when it starts |
|                           |                                      | with '/', '.' or '~'; else a hub  |
|                           |                                      | id ('org/name')                   |

An id is spelled as `dataset list` / `adapter list` show it: 4 to 36 characters of 0-9, a-f and
'-' (a unique prefix, `services.ids.resolve_id`). Give a file or folder whose name looks like
that as `./name`.
"""

from __future__ import annotations

import re

from lora_engine.model_ref import is_folder_name

FULL_ID_LENGTH = 36  # str(uuid4())
MIN_PREFIX = 4  # the shortest id prefix a person may give (`services.ids.resolve_id`)
_ID = re.compile(rf"[0-9a-f-]{{{MIN_PREFIX},{FULL_ID_LENGTH}}}")


def spelled_as_id(value: str) -> bool:
    """Whether `value` names a registry object (a data set, an adapter) rather than a path."""
    return bool(_ID.fullmatch(value.strip().lower()))


def spelled_as_path(value: str) -> bool:
    """Whether a base model `value` names a local folder (absolute, or explicitly relative)."""
    return is_folder_name(value)
