"""The training forward lora_engine owns: the loss (and classification logits) of a batch.

For the architectures in `encoder` and `decoder` we run our own forward over the model's modules
(padding-free, with only the positions the loss reads reaching the head); anything else, and any
batch layout those paths do not cover, takes the model's Hugging Face forward. Both paths give the
same numbers; ours does less work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lora_engine.data.batching import IGNORE_INDEX
from lora_engine.forward import decoder, encoder


def classification_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, labels) logits of a classification / regression batch (any `labels` key is ignored),
    pooled as the model's config says (`encoder.pooling_of`)."""
    features = {k: v for k, v in inputs.items() if k != "labels"}
    if encoder.supports(model, features):
        return encoder.classification_logits(model, features)
    return reference_classification_logits(model, features)


def reference_classification_logits(model: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same logits through the model's Hugging Face forward: `model(**features).logits` for
    "cls"; for "mean", its body's last hidden states averaged over the real tokens, then its head."""
    if encoder.pooling_of(model) == "cls":
        return model(**features).logits
    body = getattr(model, model.base_model_prefix)
    hidden = body(**features).last_hidden_state
    mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return encoder.head_logits(model, (hidden * mask).sum(dim=1) / mask.sum(dim=1))


def reference_causal_lm_loss(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions, through the model's own body."""
    body = getattr(model, model.base_model_prefix)
    hidden = body(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    targets = inputs["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def causal_lm_loss(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if decoder.supports(model, inputs):
        return decoder.causal_lm_loss(model, inputs)
    return reference_causal_lm_loss(model, inputs)


def training_loss(model: nn.Module, inputs: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """The loss one training step minimises: kind is "classification", "regression" or "generation"."""
    if kind == "generation":
        return causal_lm_loss(model, inputs)
    return logits_loss(classification_logits(model, inputs), inputs["labels"], kind)


def logits_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss of classification ("classification": cross-entropy) or regression (MSE) logits."""
    logits = logits.float()
    if kind == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)
