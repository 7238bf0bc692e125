"""The base models the tenants' API offers: the operator's list (`allowed_base_models`), else every
packaged alias (`lora_engine.model_ref.MODEL_ALIASES`) and every hub id in this machine's local hub
cache. Never a folder: a tenant names models, not paths of the operator's machines (a name that is
spelled as a folder, or holds `..` or a backslash, is refused whatever the list says). A tenant's
own full fine-tunes are bases too (`ft:` names or adapter ids): `jobs.submit_job` resolves those.
"""

from __future__ import annotations

from lora_engine.model_ref import HUB_ID, MODEL_ALIASES, hub_cache_dir, is_folder_name
from orchestrator.config import Settings

CACHE_PREFIX = "models--"


def cached_hub_ids() -> list[str]:
    """The hub ids whose config.json is in the local hub cache (`models--org--name/snapshots/*/`)."""
    root = hub_cache_dir()
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.glob(f"{CACHE_PREFIX}*")):
        hub_id = entry.name.removeprefix(CACHE_PREFIX).replace("--", "/")
        if HUB_ID.match(hub_id) and any((entry / "snapshots").glob("*/config.json")):
            found.append(hub_id)
    return found


def tenant_bases(settings: Settings) -> tuple[str, ...]:
    """The base models a tenant may fine-tune, in the order the API lists them."""
    if settings.allowed_base_models is not None:
        return tuple(dict.fromkeys(settings.allowed_base_models))
    return tuple(dict.fromkeys([*MODEL_ALIASES, *cached_hub_ids()]))


def looks_like_path(name: str) -> bool:
    return is_folder_name(name) or "\\" in name or ".." in name or name.startswith(("file:", "~"))


def base_problem(name: str, settings: Settings) -> str | None:
    """Why a tenant may not fine-tune `name` (None: it may)."""
    shown = name[:200]
    if looks_like_path(name):
        return f"{shown!r} is a path; a model is named by an alias or a hub id (see GET /v1/models)"
    allowed = tenant_bases(settings)
    if name not in allowed:
        listed = ", ".join(allowed[:20]) + (", ..." if len(allowed) > 20 else "")
        return (f"{shown!r} is not a base model tenants may fine-tune; allowed: {listed}, or one of "
                f"your own full fine-tunes by its ft: name")
    return None
