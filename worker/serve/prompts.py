"""How a request becomes the prompt an adapter was trained to read.

- An adapter trained on chat rows reads the whole conversation through its base's chat template
  (`Engine.chat_prompt`: lora_engine.data.chat's renderer, as the worker rendered its data set).
- Any other generation adapter (prompt/completion rows, E2E) reads the last user message through
  its own prompt template (lorafleet.json: "{prompt}" verbatim, E2E's MR template), and a
  /v1/completions prompt the same way: what `lorafleet adapter predict` does with a text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from orchestrator.api.errors import ApiError


@dataclass(frozen=True)
class AdapterInfo:
    """What lorafleet.json says that serving needs (read once per adapter version)."""

    kind: str
    prompt_template: str | None
    label_names: tuple[str, ...]


@lru_cache(maxsize=4096)
def adapter_info(path: str, sha256: str) -> AdapterInfo:
    """`sha256` keys the cache: a registry row pointing at other files reads them again."""
    from lora_engine.adapters.folder import read_adapter_meta

    meta = read_adapter_meta(path)
    return AdapterInfo(meta.kind or "generation", meta.prompt_template, tuple(meta.label_names))


def apply_template(template: str | None, text: str) -> str:
    """As lora_engine.predict.Predictor.prompt_for: an E2E MR or a custom prompt in its template."""
    return (template or "{prompt}").replace("{mr}", text).replace("{prompt}", text)


def last_user_message(messages: Sequence[dict]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    raise ApiError(400, "this model was trained on prompts, not conversations: it answers the last user "
                        "message, and messages has none", param="messages")
