"""The README.md model card written beside every adapter: what it is, how it scored, how it was made.

A Hugging Face style card (YAML front matter + Markdown) so the folder is self-describing when it is
copied elsewhere: base model, task, labels, prompt template, metrics per split, the resolved
training spec and the run's statistics. Pure text rendering; the caller writes the file.
"""

from __future__ import annotations

import json
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _yaml_scalar(value: Any) -> str:
    # JSON strings are valid YAML scalars and escape anything awkward.
    return json.dumps(value)


def render_model_card(meta: dict[str, Any], *, spec: dict[str, Any], metrics: dict[str, dict[str, float]],
                      stats: dict[str, Any] | None = None) -> str:
    """Markdown model card. `meta` is the adapter's lorafleet.json content."""
    method = meta.get("method", spec.get("method", "lora"))
    base = meta.get("base_model", spec.get("base_model"))
    task = meta.get("task", spec.get("task"))
    tags = ["lorafleet", method, task]
    lines = ["---"]
    lines.append(f"base_model: {_yaml_scalar(base)}")
    if method != "full":
        lines.append("library_name: peft")
    lines.append("tags:")
    lines += [f"  - {_yaml_scalar(t)}" for t in tags if t]
    lines += ["---", "", f"# {task} adapter for {base}", ""]
    kind = "full fine-tuned model" if method == "full" else f"{method} adapter (Hugging Face PEFT format)"
    lines.append(f"A {kind} trained by lorafleet on the task `{task}`.")
    lines.append("")
    lines += ["## Use", ""]
    if meta.get("label_names"):
        lines.append("Labels: " + ", ".join(f"{i} = `{n}`" for i, n in enumerate(meta["label_names"])) + ".")
    if meta.get("prompt_template"):
        lines.append(f"Prompt template: `{meta['prompt_template']}`.")
    if meta.get("max_length"):
        lines.append(f"Max length: {meta['max_length']} tokens.")
    lines += [
        "",
        "```python",
        "from lora_engine.predict import load_for_inference",
        "model = load_for_inference('<this folder>')",
        "model.generate([...])" if meta.get("kind") == "generation" else "model.classify([...])",
        "```",
        "",
    ]
    lines += ["## Metrics", ""]
    if metrics:
        names = sorted({m for per in metrics.values() for m in per})
        lines.append("| split | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for split, per in metrics.items():
            lines.append(f"| {split} | " + " | ".join(_fmt(per[n]) if n in per else "" for n in names) + " |")
    else:
        lines.append("No evaluation was run.")
    lines.append("")
    if stats:
        lines += ["## Run", "", "| statistic | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in stats.items()]
        lines.append("")
    lines += ["## Training spec", "", "```json", json.dumps(spec, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)
