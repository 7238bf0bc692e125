"""lorafleet.json: one typed record (AdapterMeta), one writer, one reader that takes every record
lorafleet has written (and plain PEFT folders), and one method <-> PEFT-flags mapping."""

from __future__ import annotations

import json

import pytest

from lora_engine.adapters.folder import (
    META_FORMAT,
    AdapterMeta,
    read_adapter_meta,
    write_adapter_meta,
)
from lora_engine.catalog import LORA_METHODS, TASKS, method_of_flags, peft_flags
from lora_engine.errors import AdapterError

# Records exactly as earlier versions wrote them.
RECIPE_RECORD = {  # recipe.adapter_meta, a trained SST-2 adapter
    "format": "lorafleet-adapter/1", "task": "sst2", "kind": "classification", "method": "rslora",
    "base_model": "minilm-l6", "label_names": ["negative", "positive"], "num_labels": 2,
    "text_fields": ["sentence"], "prompt_template": None, "max_length": 64,
    "modules_to_save": ["classifier"], "metrics": {"validation": {"accuracy": 0.84}},
    "spec": {"task": "sst2", "method": "rslora", "rank": 8},
}
IMPORT_RECORD = {  # adapters.importing.ForeignAdapter.meta, an imported E2E adapter
    "format": "lorafleet-adapter/1", "task": "e2e", "kind": "generation", "method": "lora",
    "base_model": "smollm2-135m", "label_names": [], "num_labels": None, "text_fields": ["mr", "ref"],
    "prompt_template": "Describe the restaurant: {mr}\n", "max_length": 128, "imported": True,
}
# save_adapter(..., extra={...}): the base model and whatever the library user gave
LIBRARY_RECORD = {"base_model": "tiny-gpt2", "label_names": ["neg", "pos"], "note": "mine"}


def _folder(tmp_path, meta: dict | None = None, **config):
    folder = tmp_path / "adapter"
    folder.mkdir()
    if meta is not None:
        (folder / "lorafleet.json").write_text(json.dumps(meta))
    if config:
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, **config}))
    return folder


def test_the_recipe_record_reads_whole_and_writes_back_the_same_keys(tmp_path):
    meta = read_adapter_meta(_folder(tmp_path, RECIPE_RECORD))
    assert (meta.task, meta.kind, meta.method, meta.base_model) == (
        "sst2", "classification", "rslora", "minilm-l6")
    assert meta.label_names == ("negative", "positive") and meta.num_labels == 2 and meta.max_length == 64
    assert meta.metrics == {"validation": {"accuracy": 0.84}} and meta.spec["rank"] == 8
    assert meta.modules_to_save == ("classifier",) and not meta.imported and meta.extra == {}
    # Records from before pooling was a choice were trained on Hugging Face's [CLS] head.
    assert meta.pooling == "cls"
    out = tmp_path / "rewritten"
    out.mkdir()
    write_adapter_meta(out, meta)
    assert json.loads((out / "lorafleet.json").read_text()) == {**RECIPE_RECORD, "imported": False,
                                                                 "pooling": "cls"}
    assert read_adapter_meta(out) == meta


def test_a_mean_pooled_record_round_trips(tmp_path):
    meta = read_adapter_meta(_folder(tmp_path, {**RECIPE_RECORD, "pooling": "mean"}))
    assert meta.pooling == "mean"
    out = tmp_path / "rewritten"
    out.mkdir()
    write_adapter_meta(out, meta)
    assert read_adapter_meta(out).pooling == "mean"


def test_the_import_record_reads(tmp_path):
    meta = read_adapter_meta(_folder(tmp_path, IMPORT_RECORD))
    assert meta.imported and meta.spec is None and meta.metrics == {} and meta.num_labels is None
    # The same record the import builds today, from the catalog.
    assert meta == AdapterMeta.for_task(TASKS["e2e"], base_model="smollm2-135m", method="lora", imported=True)


def test_a_bare_library_record_is_completed_from_the_peft_config(tmp_path):
    folder = _folder(tmp_path, LIBRARY_RECORD, task_type="SEQ_CLS", use_dora=True,
                     base_model_name_or_path="gpt2-hub-id")
    meta = read_adapter_meta(folder)
    assert (meta.base_model, meta.kind, meta.method) == ("tiny-gpt2", "classification", "dora")
    assert meta.label_names == ("neg", "pos") and meta.extra == {"note": "mine"}
    out = tmp_path / "rewritten"
    out.mkdir()
    write_adapter_meta(out, meta)
    written = json.loads((out / "lorafleet.json").read_text())
    assert written["note"] == "mine" and written["format"] == META_FORMAT  # unknown keys survive


def test_a_plain_peft_folder_reads_from_its_config(tmp_path):
    folder = _folder(tmp_path, None, task_type="CAUSAL_LM", use_rslora=True,
                     base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    meta = read_adapter_meta(folder)
    assert (meta.base_model, meta.kind, meta.method) == ("smollm2-135m", "generation", "rslora")
    (tmp_path / "c").mkdir()
    classifier = read_adapter_meta(_folder(tmp_path / "c", None, task_type="SEQ_CLS",
                                           base_model_name_or_path="bert-base-uncased"))
    assert classifier.pooling == "cls"  # a PEFT classifier made elsewhere: HF's [CLS] head


@pytest.mark.parametrize(("meta", "config", "message"), [
    ({**RECIPE_RECORD, "format": "lorafleet-adapter/2"}, None, "written by a newer lorafleet"),
    ({**RECIPE_RECORD, "format": "something-else"}, None, "is not a lorafleet adapter record"),
    ({**RECIPE_RECORD, "kind": "ranking"}, None, "kind 'ranking' is not one of classification"),
    ({**RECIPE_RECORD, "max_length": "long"}, None, "wrong type"),
    ({**RECIPE_RECORD, "pooling": "max"}, None, "pooling 'max' is not one of cls, mean"),
    ({"kind": "classification", "method": "lora"}, None, "does not name its base model"),
    ({}, {"task_type": "SEQ_CLS", "use_dora": True, "use_rslora": True, "base_model_name_or_path": "x"},
     "use_rslora together with use_dora"),
])
def test_malformed_records_name_the_file_and_the_problem(tmp_path, meta, config, message):
    folder = _folder(tmp_path, meta, **(config or {}))
    with pytest.raises(AdapterError, match=message) as info:
        read_adapter_meta(folder)
    assert "adapter" in str(info.value)


def test_not_an_adapter(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        read_adapter_meta(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=r"neither lorafleet\.json nor adapter_config\.json"):
        read_adapter_meta(tmp_path / "empty")


def test_method_and_peft_flags_map_both_ways():
    assert [peft_flags(m) for m in LORA_METHODS] == [
        {"use_rslora": False, "use_dora": False}, {"use_rslora": True, "use_dora": False},
        {"use_rslora": False, "use_dora": True}, {"use_rslora": False, "use_dora": False},
        {"use_rslora": False, "use_dora": False, "init_lora_weights": "pissa"},
        {"use_rslora": False, "use_dora": False, "init_lora_weights": "olora"}]
    # LoRA+'s flags are LoRA's (only the optimizer differs): they read back as LoRA.
    assert [method_of_flags(**peft_flags(m)) for m in LORA_METHODS] == [
        "lora", "rslora", "dora", "lora", "pissa", "olora"]
    with pytest.raises(ValueError, match="allowed: lora, rslora, dora, loraplus, pissa, olora"):
        peft_flags("full")
