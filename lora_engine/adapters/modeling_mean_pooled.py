"""Sequence classifiers whose head reads the mean of the last layer over the real tokens.

lorafleet ships this file, unchanged, beside a merged model (`lorafleet adapter export --merged`)
whose classifier was trained on that mean rather than on the first token ([CLS], <s>) that
transformers' own BERT and RoBERTa classifiers read. Its config.json names these classes in
`auto_map`, so

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

gives lorafleet's logits. The config's model type is this file's own, so a load without
`trust_remote_code=True` stops with transformers' request for it instead of silently feeding the
head the first token. The head is the architecture's own, fed the mean instead:
BERT: pooler (dense, tanh) -> dropout -> classifier; RoBERTa: dense -> tanh -> out_proj.
Needs torch and transformers only.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)
from transformers.modeling_outputs import SequenceClassifierOutput


def mean_of_real_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H): each row's mean over the positions its attention mask marks as real tokens (the
    heads read position 0 of what they are given)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return ((hidden * mask).sum(dim=1) / mask.sum(dim=1)).unsqueeze(1)


def _loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The training loss lorafleet uses: mean squared error for one output, else cross-entropy."""
    if labels is None:
        return None
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return F.cross_entropy(logits, labels.view(-1))


def _mask(input_ids, attention_mask, inputs_embeds) -> torch.Tensor:
    if attention_mask is not None:
        return attention_mask
    shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
    device = (input_ids if input_ids is not None else inputs_embeds).device
    return torch.ones(shape, dtype=torch.long, device=device)


class MeanPooledBertConfig(BertConfig):
    model_type = "mean_pooled_bert"


class MeanPooledBertForSequenceClassification(BertForSequenceClassification):
    config_class = MeanPooledBertConfig

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        mask = _mask(input_ids, attention_mask, inputs_embeds)
        hidden = self.bert(input_ids, attention_mask=mask, token_type_ids=token_type_ids,
                           position_ids=position_ids, inputs_embeds=inputs_embeds).last_hidden_state
        logits = self.classifier(self.dropout(self.bert.pooler(mean_of_real_tokens(hidden, mask))))
        return SequenceClassifierOutput(loss=_loss(logits, labels), logits=logits)


class MeanPooledRobertaConfig(RobertaConfig):
    model_type = "mean_pooled_roberta"


class MeanPooledRobertaForSequenceClassification(RobertaForSequenceClassification):
    config_class = MeanPooledRobertaConfig

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        mask = _mask(input_ids, attention_mask, inputs_embeds)
        hidden = self.roberta(input_ids, attention_mask=mask, token_type_ids=token_type_ids,
                              position_ids=position_ids, inputs_embeds=inputs_embeds).last_hidden_state
        logits = self.classifier(mean_of_real_tokens(hidden, mask))
        return SequenceClassifierOutput(loss=_loss(logits, labels), logits=logits)
