"""Model names `ft:<base>:<tenant>:<suffix or task>:<adapter id>`: built from the adapter, parsed
back by their LAST field, whatever the other fields hold."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from orchestrator.services.model_names import model_name, parse_model_name

ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def adapter(base_model: str, task: str = "sst2", id: str = ID) -> SimpleNamespace:
    return SimpleNamespace(id=id, base_model=base_model, task=task)


def test_names_spell_base_tenant_suffix_or_task_and_id():
    assert model_name(adapter("tiny-bert"), "acme") == f"ft:tiny-bert:acme:sst2:{ID}"
    assert model_name(adapter("smollm2-135m", "e2e"), "acme", "my-bot") == f"ft:smollm2-135m:acme:my-bot:{ID}"
    assert model_name(adapter("smollm2-135m", "e2e"), "acme", "") == f"ft:smollm2-135m:acme:e2e:{ID}"
    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_name(adapter(hub), "globex") == f"ft:{hub}:globex:sst2:{ID}"
    # A local folder is named by its last part: a name never shows a machine's path.
    assert model_name(adapter("/srv/models/my-base"), "acme") == f"ft:my-base:acme:sst2:{ID}"


@pytest.mark.parametrize("base,suffix", [
    ("tiny-bert", None), ("org/model:v2", None), ("a:b:c:d", "x:y"), ("tiny-gpt2", ":::"),
    ("tiny-gpt2", "ft:tiny:acme:sst2:" + "1" * 8), ("∂ünïcode", "é:\u202e"),
])
def test_hostile_parts_round_trip_to_the_adapter_id(base: str, suffix: str | None):
    assert parse_model_name(model_name(adapter(base), "acme", suffix)) == ID


@pytest.mark.parametrize("text", [
    "tiny-bert", "smollm2-135m", "", None, 7, "ft:", f"ft:{ID}", f"ft:a:b:{ID}", "ft:a:b:c:not-a-uuid",
    f"ft:a:b:c:{ID.upper()}", f"ft:a:b:c:{{{ID}}}", f"ft:a:b:c:{ID}:", f"FT:a:b:c:{ID}", f"ft:a:b:c:{ID} ",
    f"ft:a:b:c:{ID.replace('-', '')}",
])
def test_what_is_not_an_ft_name_parses_to_none(text):
    assert parse_model_name(text) is None
