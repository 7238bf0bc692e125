"""Inference with a trained adapter folder: classify texts, or generate from MRs / prompts.

`load_for_inference(folder)` reads lorafleet.json (`adapters.folder.AdapterMeta`: task, labels, prompt
template, max length, base model) so the folder alone is enough: it loads the base model, then either

- injects and loads the LoRA adapter (PEFT files), optionally merging it into the base weights
  (`merged=True`: W ← W0 + s·B·A once, then inference costs exactly the base model's), or
- loads a `full` fine-tune's saved model folder directly.

Unmerged and merged give the same outputs up to float rounding. Classification uses the training
tokenisation (`encode_classification`, same max length); generation formats inputs with the
adapter's prompt template and tokenises with `encode_prompts`, as training did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_engine.adapters.folder import AdapterMeta, read_adapter_meta
from lora_engine.device import DeviceInfo, pick_device
from lora_engine.errors import AdapterError
from lora_engine.generate import GREEDY, PAPER_BEAM, DecodeSettings, generate_texts


@dataclass(frozen=True)
class Prediction:
    """One classification: the label's name (or id as text), its id and probability; regression:
    `value` is the predicted score and `label`/`label_id` are None."""

    label: str | None
    label_id: int | None
    score: float
    probabilities: tuple[float, ...] = ()
    value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.value is not None:
            return {"value": self.value}
        return {"label": self.label, "label_id": self.label_id, "score": self.score,
                "probabilities": list(self.probabilities)}

    def __str__(self) -> str:
        return f"{self.value:.4f}" if self.value is not None else f"{self.label} ({self.score:.3f})"


class Predictor:
    def __init__(self, model, tokenizer, meta: AdapterMeta, device: DeviceInfo, *, merged: bool):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.device = device
        self.merged = merged
        self.kind = meta.kind
        self.max_length = meta.max_length or 128
        self.label_names = list(meta.label_names)

    def classify(self, texts: Sequence[str | tuple[str, str]], *, batch_size: int = 64) -> list[Prediction]:
        """Predictions for single texts or (text, text_pair) tuples."""
        from lora_engine.data import ClassificationExample
        from lora_engine.data.batching import encode_classification
        from lora_engine.evaluate import predict_logits

        if self.kind == "generation":
            raise ValueError("this adapter generates text; use .generate(), not .classify()")
        if not texts:
            return []
        examples = []
        for t in texts:
            if isinstance(t, tuple | list):
                if len(t) != 2 or not all(isinstance(x, str) for x in t):
                    raise ValueError(f"a text pair must be (str, str), got {t!r}")
                examples.append(ClassificationExample(t[0], t[1], 0))
            elif isinstance(t, str):
                examples.append(ClassificationExample(t, None, 0))
            else:
                raise ValueError("classify takes strings or (text, text_pair) tuples, "
                                 f"got {type(t).__name__}")
        encoded = encode_classification(examples, self.tokenizer, self.max_length)
        logits = predict_logits(self.model, encoded, device=self.device, batch_size=batch_size)
        if self.kind == "regression":
            return [Prediction(None, None, float(v), value=float(v)) for v in logits[:, 0]]
        probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
        out = []
        for row in probs:
            i = int(np.argmax(row))
            name = self.label_names[i] if i < len(self.label_names) else str(i)
            out.append(Prediction(name, i, float(row[i]), tuple(float(p) for p in row)))
        return out

    def prompt_for(self, text: str) -> str:
        """The adapter's prompt for an input (an E2E MR, or a custom prompt verbatim)."""
        template = self.meta.prompt_template or "{prompt}"
        return template.replace("{mr}", text).replace("{prompt}", text)

    def generate(self, inputs: Sequence[str], *, beam: bool = False,
                 decode: DecodeSettings | None = None, as_prompts: bool = False) -> list[str]:
        """Generated texts. `inputs` are MRs (or raw prompts with `as_prompts=True`); greedy by
        default, the paper's beam search (10 beams, length penalty 0.8, no-repeat-4) with `beam`."""
        from lora_engine.data.batching import encode_prompts

        if self.kind != "generation":
            raise ValueError("this adapter classifies; use .classify(), not .generate()")
        if not inputs:
            return []
        prompts = list(inputs) if as_prompts else [self.prompt_for(t) for t in inputs]
        settings = decode or (PAPER_BEAM if beam else GREEDY)
        return generate_texts(self.model, encode_prompts(self.tokenizer, prompts), tokenizer=self.tokenizer,
                              device=self.device, settings=settings)


def load_for_inference(adapter_dir: str | Path, merged: bool = False, *,
                       device: DeviceInfo | None = None) -> Predictor:
    """A Predictor for an adapter folder (or a `full` model folder) written by `train()`."""
    from lora_engine.adapters.io import CONFIG_NAME, head_rows, load_adapter
    from lora_engine.forward.encoder import set_pooling
    from lora_engine.inject import merge_lora
    from lora_engine.models import load_base_model

    folder = Path(adapter_dir)
    meta = read_adapter_meta(folder)
    kind, num_labels = meta.kind, meta.num_labels
    device = device or pick_device()
    is_adapter = (folder / CONFIG_NAME).is_file()
    if kind == "classification" and not num_labels:
        num_labels = len(meta.label_names) or (head_rows(folder) if is_adapter else None)
    if is_adapter:
        model, tokenizer = load_base_model(meta.base_model, kind, num_labels)
        load_adapter(model, folder)
        if merged:
            merge_lora(model)
    elif (folder / "config.json").is_file():
        model, tokenizer = load_base_model(str(folder), kind, num_labels)
        merged = True  # a full model has nothing to merge
    else:
        raise AdapterError(f"{str(folder)!r} holds neither adapter files nor a saved model")
    if kind != "generation":
        set_pooling(model, meta.pooling)  # what the head was trained to read
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device.device)
    return Predictor(model, tokenizer, meta, device, merged=merged)
