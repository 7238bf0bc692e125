"""The README.md model card written beside every adapter: what it is, how it scored, how it was made.

Made with huggingface_hub's `ModelCard` / `ModelCardData`, so the YAML front matter is what the
Hub reads: the base model's hub id, `library_name: peft`, tags, and the evaluation results as
`model-index` entries (one per metric and split). The Markdown body repeats the metrics as a
table, says what data each split's rows are, and records the resolved training spec and the run's
statistics. Pure text rendering; `adapters.io` writes it into the folder it builds, and
`adapters.merged_export` into a merged export (then it says how transformers alone loads that).

Where Hugging Face's stock loader would not give lorafleet's outputs (a mean-pooled classifier:
transformers' BERT and RoBERTa classifiers feed the head the first token), the card says so in its
first lines, with the loaders that do (`loader_notice`; `adapter export` prints it too).

What a split is, said as it is (`measured_on`): lorafleet's GLUE `validation` rows are held out of
GLUE's training split (GLUE's own validation set is not in the data folder), so a GLUE adapter's
scores are entered as measured on GLUE's `train` split, on rows it was not trained on, and are not
comparable with published GLUE results; E2E's `validation` is the challenge's official one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lora_engine.adapters.folder import AdapterMeta
from lora_engine.catalog import GLUE_TASKS, TASKS
from lora_engine.methods import BY_NAME
from lora_engine.model_ref import hub_id_of

if TYPE_CHECKING:
    from lora_engine.adapters.merged_export import MergedFolder

PIPELINE_TAGS = {"classification": "text-classification", "regression": "text-classification",
                 "generation": "text-generation"}
PEFT_AUTO_CLASS = {"classification": "AutoPeftModelForSequenceClassification",
                   "regression": "AutoPeftModelForSequenceClassification",
                   "generation": "AutoPeftModelForCausalLM"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _dataset(task: str) -> tuple[str, str, str | None]:
    """(dataset type, display name, config) of a task's data, as the Hub names them."""
    if task in GLUE_TASKS:
        return "nyu-mll/glue", f"GLUE {task.upper()}", task
    if task == "e2e":
        return "tuetschek/e2e_nlg", "E2E NLG", None
    return "custom", f"{task} (the tenant's own data)", None


def measured_on(task: str, split: str) -> tuple[str, str]:
    """(the Hub's split name, what the rows are) of the data a metric of `split` was measured on."""
    if task in GLUE_TASKS and split == "validation":
        return "train", ("rows held out of GLUE's training split (not trained on); GLUE's own validation "
                         "set is not used, so these scores compare between lorafleet runs, not with "
                         "published GLUE results")
    if task == "e2e" and split == "validation":
        return "validation", "the E2E NLG Challenge's official validation set"
    if split == "validation":
        return "validation", "the data set's validation file, else rows held out of its training file"
    return split, f"the {split!r} split"


def eval_results(task: str, kind: str, metrics: dict[str, dict[str, float]]) -> list[Any]:
    from huggingface_hub import EvalResult

    dataset_type, dataset_name, config = _dataset(task)
    results = []
    for split, per in metrics.items():
        hub_split, _ = measured_on(task, split)
        held_out = hub_split != split
        name_of = f"{dataset_name}, rows held out of {hub_split}" if held_out else dataset_name
        where = f"held-out {hub_split}" if held_out else split
        results += [EvalResult(task_type=PIPELINE_TAGS.get(kind, "text-classification"),
                               dataset_type=dataset_type, dataset_name=name_of, dataset_config=config,
                               dataset_split=hub_split, metric_type=name, metric_value=float(value),
                               metric_name=f"{name} ({where})")
                    for name, value in sorted(per.items())]
    return results


def _whole_model(method: str) -> bool:
    """True when a run of `method` saves the whole trained model, not a PEFT adapter ('full')."""
    entry = BY_NAME.get(method)
    return entry is not None and entry.trains and not entry.adapter


def _kind(meta: AdapterMeta) -> str:
    task = meta.task or "custom"
    return meta.kind or (TASKS[task].kind if task in TASKS else "classification")


def loader_notice(meta: AdapterMeta) -> str | None:
    """Why the stock Hugging Face loader of the folder `meta` describes would not give lorafleet's
    outputs, and which loaders do; None when it would."""
    if _kind(meta) == "generation" or meta.pooling != "mean":
        return None
    if _whole_model(meta.method):
        stock, what = "transformers' `AutoModelForSequenceClassification`", "model"
    else:
        stock, what = "PEFT's `AutoPeftModelForSequenceClassification`", "adapter"
    return (f"{stock} does not reproduce this {what}: it feeds the head the first token ([CLS]), but "
            "the head was trained on the mean of the last layer, so loaded that way it scores lower "
            "without any error. Load it with lorafleet (`lora_engine.load_for_inference(folder)`), feed "
            "the head that mean as the model card (README.md) shows, or export it with `lorafleet "
            "adapter export --merged`, whose folder loads with `AutoModelForSequenceClassification"
            ".from_pretrained(folder, trust_remote_code=True)`.")


def merged_notice(merged: MergedFolder) -> str:
    """How transformers alone loads a merged export, and why trust_remote_code where it is needed."""
    args = "folder, trust_remote_code=True" if merged.remote_code else "folder"
    line = f"Load it with `{merged.auto_class}.from_pretrained({args})`"
    if not merged.remote_code:
        return line + ": a plain transformers model, no PEFT or lorafleet needed."
    return (line + ": the head reads the mean of the last layer over the real tokens (as it was "
            "trained), not the [CLS] token transformers' own classifier reads; that pooling ships "
            "beside the weights as a small module named in config.json's `auto_map`, and without "
            "trust_remote_code=True transformers refuses the folder instead of pooling [CLS] (pass it "
            "to `AutoTokenizer` too, which reads the same config).")


def _pooling_lines(pooling: str, method: str) -> list[str]:
    """How the classifier reads a text, and, for a mean-pooled one, how to feed its head outside
    lorafleet (Hugging Face's BertForSequenceClassification pools the [CLS] token)."""
    if pooling != "mean":
        return ["Pooling: the head reads the last layer's first token ([CLS]), as Hugging Face's "
                "sequence-classification models do.", ""]
    if _whole_model(method):
        load = ["from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                "clf = AutoModelForSequenceClassification.from_pretrained('<this folder>').eval()",
                "tokenizer = AutoTokenizer.from_pretrained('<this folder>')"]
    else:
        load = ["from peft import AutoPeftModelForSequenceClassification",
                "from transformers import AutoTokenizer",
                "clf = AutoPeftModelForSequenceClassification.from_pretrained('<this folder>').eval()",
                "base = clf.peft_config['default'].base_model_name_or_path",
                "tokenizer = AutoTokenizer.from_pretrained(base)"]
    return ["Pooling: **mean**. The head reads the mean of the last layer's states over the real tokens "
            "(the pooling the base model was trained with), not the [CLS] token that Hugging Face's "
            "`BertForSequenceClassification` pools, so outside lorafleet feed the head that mean:", "",
            "```python", *load,
            "body = clf.get_base_model() if hasattr(clf, 'get_base_model') else clf",
            "enc = tokenizer(texts, padding=True, return_tensors='pt')",
            "hidden = body.base_model(**enc).last_hidden_state",
            "mask = enc['attention_mask'].unsqueeze(-1).to(hidden.dtype)",
            "mean = ((hidden * mask).sum(1) / mask.sum(1)).unsqueeze(1)",
            "logits = body.classifier(body.dropout(body.base_model.pooler(mean)))  # BERT",
            "# RoBERTa: logits = body.classifier(mean)", "```", ""]


def _stored_as_lines(method: str, spec: dict) -> list[str]:
    """For a method whose files hold another's form (methods.Method.stored_as): what was trained and
    what the files are."""
    entry = BY_NAME.get(method)
    if entry is None or entry.stored_as is None:
        return []
    rank = spec.get("rank")
    if entry.stored_rank_factor == 1:
        return ["", f"The files are a plain {entry.stored_as} adapter: {method} changes only how it was "
                "trained."]
    return ["", f"Trained as {method} r={rank} on the base model's residual; stored, as PEFT's "
            "`save_pretrained(..., path_initial_model_for_weight_conversion=...)` converts it, as a plain "
            f"{entry.stored_as} adapter of rank {entry.stored_rank(rank) if isinstance(rank, int) else '2r'} "
            "on the unchanged base model, which is what loads it."]


def quantized_notice(quantize: str, base: str) -> str:
    """What a card says of an adapter trained on a quantised base (QLoRA), as PEFT documents it."""
    return (f"Trained on an {quantize}-quantised `{base}` (QLoRA: bitsandbytes 4-bit NF4, double "
            "quantisation, bf16 compute); the adapter itself is a plain LoRA adapter of the unquantised "
            "base and loads on it in full precision, or on the base loaded 4-bit "
            "(`BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4')`) as it was trained. "
            "To merge it, load the unquantised base and merge there (PEFT's `merge_and_unload()`); "
            "merging into the 4-bit weights is lossy, the merged weight being rounded back to 4 bits.")


def render_model_card(meta: AdapterMeta, *, stats: dict[str, Any] | None = None,
                      merged: MergedFolder | None = None) -> str:
    """Markdown model card with Hub metadata for the adapter (or full model) `meta` describes, or
    for its merged export (`merged`); its metrics and spec come from `meta`, `stats` are the run's
    statistics."""
    from huggingface_hub import ModelCard, ModelCardData

    method, alias, metrics, spec = meta.method, meta.base_model, meta.metrics, meta.spec or {}
    whole = _whole_model(method)
    base = hub_id_of(alias)
    task = meta.task or "custom"
    kind = _kind(meta)
    name = f"{task}-{method}-{alias}" + ("-merged" if merged is not None else "")
    notice = loader_notice(meta)
    data = ModelCardData(
        base_model=base, library_name="transformers" if whole or merged is not None else "peft",
        pipeline_tag=PIPELINE_TAGS.get(kind), tags=[t for t in ("lorafleet", method, task) if t],
        model_name=name, eval_results=eval_results(task, kind, metrics) or None,
    )
    if merged is not None:
        lines = [f"# {task} {method} model for {base}, merged", "",
                 f"> **Loading:** {merged_notice(merged)}", ""]
        made = "A full fine-tune" if whole else f"A {method} adapter merged into the weights of `{base}`"
        lines.append(f"{made}, trained by lorafleet on the task `{task}`, as a plain transformers folder.")
    else:
        lines = [f"# {task} {method} adapter for {base}", ""]
        if notice:
            lines += [f"> **Loading:** {notice}", ""]
        what = "full fine-tuned model" if whole else f"{method} adapter (Hugging Face PEFT format)"
        lines.append(f"A {what} trained by lorafleet on the task `{task}`"
                     + (f" (lorafleet alias `{alias}`)." if alias != base else "."))
    if merged is None:  # a merged folder is no adapter: how the adapter's files are stored is moot
        lines += _stored_as_lines(method, spec)
    if spec.get("quantize") and merged is None:
        lines += ["", quantized_notice(spec["quantize"], base)]
    lines += ["", "## Use", ""]
    if meta.label_names:
        lines.append("Labels: " + ", ".join(f"{i} = `{n}`" for i, n in enumerate(meta.label_names)) + ".")
    if meta.prompt_template:
        lines.append(f"Prompt template: `{meta.prompt_template}`.")
    if meta.max_length:
        lines.append(f"Max length: {meta.max_length} tokens.")
    if merged is not None:
        remote = ", trust_remote_code=True" if merged.remote_code else ""
        lines += ["", "```python", f"from transformers import {merged.auto_class}, AutoTokenizer",
                  f"model = {merged.auto_class}.from_pretrained('<this folder>'{remote}).eval()",
                  f"tokenizer = AutoTokenizer.from_pretrained('<this folder>'{remote})", "```", ""]
    else:
        call = "model.generate([...])" if kind == "generation" else "model.classify([...])"
        lines += ["", "```python", "import lora_engine as le",
                  "model = le.load_for_inference('<this folder>')", call, "```", ""]
        if not whole and alias != base and notice is None:  # else: the recipe under Pooling
            auto = PEFT_AUTO_CLASS.get(kind, "AutoPeftModel")
            lines += ["With PEFT (the base model is fetched from the Hub):", "", "```python",
                      f"from peft import {auto}", f"model = {auto}.from_pretrained('<this folder>')",
                      "```", ""]
        if kind != "generation":
            lines += _pooling_lines(meta.pooling, method)
    lines += ["## Metrics", ""]
    if metrics:
        names = sorted({m for per in metrics.values() for m in per})
        lines.append("| split | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for split, per in metrics.items():
            lines.append(f"| {split} | " + " | ".join(_fmt(per[n]) if n in per else "" for n in names) + " |")
        lines.append("")
        lines += [f"`{split}`: {measured_on(task, split)[1]}." for split in metrics]
    else:
        lines.append("No evaluation was run.")
    lines.append("")
    if stats:
        lines += ["## Run", "", "| statistic | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in stats.items()]
        lines.append("")
    lines += ["## Training spec", "", "```json", json.dumps(spec, indent=2, sort_keys=True), "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)
