"""A merged export: an adapter (or a full fine-tune) as a plain transformers folder, the LoRA
update merged into the base weights (W ← W0 + s·B·A; DoRA: its magnitude applied to the merged
direction), so nothing but transformers loads it and it runs at the base model's cost.

    write_merged_folder(adapter_folder, out)

    out/
      config.json              the base's config; a classifier's label names as id2label; for a
                               mean-pooled classifier its model type, architecture and `auto_map`
                               name the shipped module's classes
      model.safetensors        the merged weights, the classifier head beside them
      modeling_mean_pooled.py  only for a mean-pooled classifier (see that file)
      tokenizer files          the tokenizer lorafleet trained and evaluates with
      README.md                the model card, saying how to load it

A classifier loads with `AutoModelForSequenceClassification.from_pretrained(out,
trust_remote_code=True)` ([CLS]-pooled ones without trust_remote_code too); a generation adapter
with `AutoModelForCausalLM.from_pretrained(out)`. Either gives lorafleet's outputs for the same
inputs. Safetensors only: nothing here writes or reads a pickle.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lora_engine.adapters import modeling_mean_pooled as shipped
from lora_engine.adapters.folder import AdapterMeta, write_json
from lora_engine.errors import AdapterError

# The architecture lorafleet mean-pools -> the shipped class that does the same outside lorafleet.
MEAN_POOLED = {"BertForSequenceClassification": shipped.MeanPooledBertForSequenceClassification,
               "RobertaForSequenceClassification": shipped.MeanPooledRobertaForSequenceClassification}
SHIPPED_MODULE = Path(shipped.__file__).name


@dataclass(frozen=True)
class MergedFolder:
    folder: Path
    meta: AdapterMeta  # the adapter's record (what it was trained for, its pooling)
    auto_class: str  # the transformers Auto class that loads the folder
    remote_code: bool  # whether that load needs trust_remote_code=True (the shipped pooling)


def write_merged_folder(adapter_folder: str | os.PathLike, out: str | os.PathLike) -> MergedFolder:
    """Write the merged model of `adapter_folder` (an adapter or a full model folder lorafleet
    wrote) into the folder `out` (a folder being built: `atomic.atomic_folder`), on the CPU in
    float32."""
    from lora_engine.adapters.modelcard import render_model_card
    from lora_engine.device import pick_device
    from lora_engine.inject import export_merged
    from lora_engine.models import quiet_transformers
    from lora_engine.predict import load_for_inference

    out = Path(out)
    predictor = load_for_inference(adapter_folder, device=pick_device("cpu"))
    meta = predictor.meta
    model = export_merged(predictor.model, inplace=True)
    if meta.kind == "classification" and meta.label_names:
        model.config.id2label = dict(enumerate(meta.label_names))
        model.config.label2id = {name: i for i, name in enumerate(meta.label_names)}
    with quiet_transformers():
        model.save_pretrained(out)
        predictor.tokenizer.save_pretrained(out)
    pickled = sorted(p.name for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
    if pickled:  # transformers chose a pickle format: never shipped
        raise AdapterError(f"the merged export wrote {', '.join(pickled)}; only safetensors are exported")
    remote = meta.kind != "generation" and meta.pooling == "mean"
    if remote:
        ship_mean_pooling(out, type(model).__name__)
    auto = "AutoModelForCausalLM" if meta.kind == "generation" else "AutoModelForSequenceClassification"
    merged = MergedFolder(out, meta, auto, remote)
    (out / "README.md").write_text(render_model_card(meta, merged=merged), encoding="utf-8")
    return merged


def ship_mean_pooling(out: Path, architecture: str) -> None:
    """Copy the mean-pooling module into `out` and point config.json at its classes, as models
    with their own code on the Hub do (`auto_map`)."""
    model_class = MEAN_POOLED.get(architecture)
    if model_class is None:  # lorafleet trains mean pooling for these architectures only
        raise AdapterError(f"mean pooling is exported for {', '.join(MEAN_POOLED)}, not {architecture}")
    shutil.copyfile(shipped.__file__, out / SHIPPED_MODULE)
    module = SHIPPED_MODULE.removesuffix(".py")
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))  # transformers' own, just written
    config.update(model_type=model_class.config_class.model_type, architectures=[model_class.__name__],
                  auto_map={"AutoConfig": f"{module}.{model_class.config_class.__name__}",
                            "AutoModelForSequenceClassification": f"{module}.{model_class.__name__}"})
    write_json(out / "config.json", config)
