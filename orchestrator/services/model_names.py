"""Every adapter's one name, as the API, `adapter show` and serving spell it:

    ft:<base>:<tenant slug>:<suffix or task>:<adapter id>

`<base>` is the adapter's base model as its job named it: an alias (`smollm2-135m`) or a hub id
(`HuggingFaceTB/SmolLM2-135M`, which may itself hold ':'); a base given as a local folder is named
by the folder's last part only (a name is shown to the tenant: it never carries a machine's
path). `<suffix or task>` is the job's `suffix` (OpenAI's, given at creation) or, for an adapter
without one (imported, or trained without a suffix), its task.

Only the last field identifies the adapter: `parse_model_name` takes the text after the LAST ':'
as the adapter id, so a base, suffix or anything else holding ':' cannot shift it, and a name
whose suffix changed or whose base was spelled differently still finds the adapter (looked up
within the caller's tenant, like every id).
"""

from __future__ import annotations

import uuid
from pathlib import PurePath
from typing import Any

from lora_engine.model_ref import is_folder_name

PREFIX = "ft:"
FIELDS = 5  # ft, base, tenant slug, suffix or task, adapter id


def _base_part(base_model: str) -> str:
    if is_folder_name(base_model):
        return PurePath(base_model).name or "local"
    return base_model


def model_name(adapter: Any, tenant_slug: str, suffix: str | None = None) -> str:
    """`adapter`'s name (any object with `id`, `base_model`, `task`); `suffix`: its job's suffix
    (None or empty: the task names it)."""
    return f"{PREFIX}{_base_part(adapter.base_model)}:{tenant_slug}:{suffix or adapter.task}:{adapter.id}"


def parse_model_name(text: Any) -> str | None:
    """The adapter id a model name ends with (canonical UUID form), or None when `text` is not
    an `ft:` name (a base model's name, or anything malformed)."""
    if not isinstance(text, str) or not text.startswith(PREFIX) or text.count(":") < FIELDS - 1:
        return None
    last = text.rsplit(":", 1)[1]
    try:
        parsed = uuid.UUID(last)
    except ValueError:
        return None
    # Only the canonical spelling: braces, "urn:uuid:" or upper case would name one adapter twice.
    return str(parsed) if str(parsed) == last else None
