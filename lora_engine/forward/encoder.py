"""Our forward for BERT / RoBERTa sequence classification: packed tokens, first-token-only last layer.

It calls the model's own submodules (embeddings, projections, LayerNorms, feed-forward, head), so
LoRA, DoRA and trained heads take part exactly as in Hugging Face's forward, and it computes the
same logits (tested to 1e-5 against `model(**inputs).logits`). It does less work in two places:

- padding: every token-wise operation runs on the real tokens only (`Packing`);
- the last layer: with "cls" pooling the head reads only the first token, so that layer computes
  keys and values for every token but queries, attention output and feed-forward for the first
  token alone (about 5/6 of one layer's work saved).

Pooling (`catalog.POOLINGS`, read from `model.config.classifier_pooling`, missing = "cls"): "cls"
gives Hugging Face's logits; "mean" feeds the head the mean of the last layer over each row's real
tokens instead of the first token's state (every token then goes through the last layer), and the
head is the same: BERT's pooler -> dropout -> classifier, RoBERTa's dense -> tanh -> out_proj.
"""

from __future__ import annotations

import torch
from torch import nn

from lora_engine.catalog import POOLINGS
from lora_engine.errors import LoraConfigError
from lora_engine.forward import recompute
from lora_engine.forward.packing import Packing, keeps_probabilities

SUPPORTED = {"BertForSequenceClassification": "bert", "RobertaForSequenceClassification": "roberta"}


def pooling_of(model: nn.Module) -> str:
    """The pooling the model's classifier reads: config.classifier_pooling, "cls" when unset."""
    return getattr(model.config, "classifier_pooling", None) or "cls"


def set_pooling(model: nn.Module, pooling: str) -> None:
    """Make `model`'s classifier read `pooling`; saved with a full model's config.json."""
    if pooling not in POOLINGS:
        raise LoraConfigError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    if pooling == "mean" and type(model).__name__ not in SUPPORTED:
        raise LoraConfigError(f"mean pooling is implemented for BERT and RoBERTa classifiers, not "
                              f"{type(model).__name__}; use pooling 'cls'")
    model.config.classifier_pooling = pooling


def supports(model: nn.Module, inputs: dict[str, torch.Tensor]) -> bool:
    body_name = SUPPORTED.get(type(model).__name__)
    if body_name is None or "input_ids" not in inputs or "attention_mask" not in inputs:
        return False
    cfg = model.config
    if cfg.is_decoder or getattr(cfg, "add_cross_attention", False):
        return False
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        return False
    # The head reads position 0 of every row; a row that does not start with a real token
    # (left padding) is left to the reference forward.
    return bool(inputs["attention_mask"][:, 0].all())


def _self_attention(attn: nn.Module, hidden: torch.Tensor, packing: Packing, *,
                    first_only: torch.Tensor | None, training: bool, mode: str) -> torch.Tensor:
    """BertSelfAttention on packed tokens; with `first_only`, queries only at those packed rows."""
    heads, size = attn.num_attention_heads, attn.attention_head_size
    query_in = hidden if first_only is None else hidden.index_select(0, first_only)
    q = attn.query(query_in).view(-1, heads, size)
    k = attn.key(hidden).view(-1, heads, size)
    v = attn.value(hidden).view(-1, heads, size)
    ctx = recompute.attention(mode, packing.attention, q, k, v, scale=attn.scaling, causal=False,
                            dropout=attn.dropout.p if training else 0.0, query_positions=first_only)
    return ctx.reshape(ctx.shape[0], heads * size)


def _layer(layer: nn.Module, hidden: torch.Tensor, packing: Packing, *, first_only: torch.Tensor | None,
           training: bool, mode: str) -> torch.Tensor:
    ctx = _self_attention(layer.attention.self, hidden, packing, first_only=first_only, training=training,
                          mode=mode)
    residual = hidden if first_only is None else hidden.index_select(0, first_only)
    attended = layer.attention.output(ctx, residual)  # dense, dropout, LayerNorm(x + residual)
    return layer.output(layer.intermediate(attended), attended)


def embed(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Packing, torch.Tensor]:
    """The packed embeddings (N, hidden) of a batch, its packing, and the packed row of each row's
    first token (what the last layer's queries and the head read)."""
    body = getattr(model, SUPPORTED[type(model).__name__])
    packing = Packing.from_mask(inputs["attention_mask"])
    embedded = body.embeddings(input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids"))
    hidden = packing.pack(embedded)
    first = packing.compact_positions(torch.arange(packing.batch, device=hidden.device) * packing.length)
    return hidden, packing, first


def encode(model: nn.Module, hidden: torch.Tensor, packing, first: torch.Tensor | None) -> torch.Tensor:
    """Every layer over packed tokens; the last one only for the `first` rows (None: for every
    token). `packing` is any object with Packing's `attention` (the packed trainer passes one
    spanning several batches)."""
    layers = getattr(model, SUPPORTED[type(model).__name__]).encoder.layer
    if recompute.enabled(model):
        modes = recompute.plan(model, _footprints(model, layers, hidden, packing, first), outside=0)
    else:
        modes = [recompute.KEEP] * len(layers)
    for i, (layer, mode) in enumerate(zip(layers, modes, strict=True)):
        last = i == len(layers) - 1
        hidden = recompute.run(mode, _layer, layer, hidden, packing, first_only=first if last else None,
                               training=model.training, mode=mode)
    return hidden


def _footprints(model: nn.Module, layers, hidden: torch.Tensor, packing: Packing,
                first: torch.Tensor | None) -> list[recompute.LayerBytes]:
    """What each layer keeps for the backward pass (`recompute.LayerBytes`), in elements: the
    attention core H·L per query position of the padded rows (the probabilities; under dropout also
    its mask and the dropped probabilities: 3·H·L; none where a fused kernel runs); per real token
    7·hidden (q, k and v for the attention matmuls, the two LayerNorms' inputs, the two dropout
    masks) + intermediate (the activation's input) + what the adapters keep. The last layer, queries
    at the first tokens only, keeps k and v of every token and the rest for the first tokens."""
    cfg, tokens, element = model.config, hidden.shape[0], hidden.element_size()
    per_query = cfg.num_attention_heads * packing.length * (3 if cfg.attention_probs_dropout_prob else 1)
    if not keeps_probabilities(hidden.device, packing.length):
        per_query = 0
    rest = 7 * cfg.hidden_size + cfg.intermediate_size
    out = []
    for i, layer in enumerate(layers):
        adapters = recompute.adapter_bytes(layer, tokens, element)
        if first is None or i < len(layers) - 1:
            queries, rows, keys = packing.batch * packing.length, tokens, 0
        else:
            queries, rows, keys = packing.batch, first.numel(), 2 * cfg.hidden_size * tokens
        out.append(recompute.LayerBytes(core=per_query * queries * element,
                                        rest=(rest * rows + keys) * element + adapters,
                                        inputs=tokens * cfg.hidden_size * element))
    return out


def first_token_states(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, hidden) last-layer states of each row's first token, as the classification head sees them."""
    return encode(model, *embed(model, inputs))


def mean_token_states(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, hidden) mean of the last layer's states over each row's real tokens."""
    hidden, packing, _ = embed(model, inputs)
    return packing.row_means(encode(model, hidden, packing, None))


def head_logits(model: nn.Module, pooled: torch.Tensor, *, classifier: nn.Module | None = None,
                pooler: nn.Module | None = None) -> torch.Tensor:
    """(B, labels) logits from pooled (B, hidden) states (the first token's, or the mean);
    `classifier`/`pooler` default to the model's own."""
    classifier = classifier if classifier is not None else model.classifier
    pooled = pooled.unsqueeze(1)  # (B, 1, hidden): the heads index [:, 0]
    if isinstance(classifier, nn.Linear):  # BERT: pooler -> dropout -> classifier
        pooler = pooler if pooler is not None else model.bert.pooler
        return classifier(model.dropout(pooler(pooled)))
    return classifier(pooled)  # RoBERTa's classification head takes [:, 0] itself


def classification_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, labels) logits of the model's pooling; with "cls", equal to `model(**inputs).logits`."""
    if pooling_of(model) == "mean":
        return head_logits(model, mean_token_states(model, inputs))
    return head_logits(model, first_token_states(model, inputs))
