"""Our forward for Llama-family causal LMs (SmolLM2, TinyLlama, Llama): packed tokens, labelled-only LM head.

Like `encoder`, it calls the model's own submodules (RMSNorms, projections, MLP, rotary table,
LM head), so LoRA and DoRA take part as in Hugging Face's forward, and the loss equals
`model(**inputs, labels=labels).loss` (tested). It does less work by running every token-wise
operation on real tokens only and the LM head (a vocabulary-wide GEMM plus softmax, about a fifth
of a small model's step) only at positions whose next token is labelled.

Under gradient checkpointing the LM head and loss run in chunks of labelled rows, each recomputed
in the backward pass (`_chunked_loss`): the logits of every labelled row, their log-probabilities
and both gradients (~1.6 GB on SmolLM2-135M at 8 × 256, a third of the step's peak) would
otherwise be a floor that no layer recompute lowers. Off, the path is the one-shot head as before.

Positions follow Hugging Face's default for training batches (0..L-1 in every row), which is what
right-padded batches need; other layouts go to the reference forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lora_engine.data.batching import IGNORE_INDEX
from lora_engine.forward import recompute
from lora_engine.forward.packing import Packing, is_right_padded, keeps_probabilities


def supports(model: nn.Module, inputs: dict[str, torch.Tensor]) -> bool:
    if type(model).__name__ != "LlamaForCausalLM" or "labels" not in inputs or "attention_mask" not in inputs:
        return False
    if getattr(model.config, "pretraining_tp", 1) != 1:
        return False
    mask = inputs["attention_mask"].bool()
    # Right padding only (so positions 0..len-1 are each row's real tokens), and every labelled
    # next token is predicted from a real token.
    labelled = inputs["labels"][:, 1:] != IGNORE_INDEX
    return is_right_padded(mask) and bool(mask[:, :-1][labelled].all())


def _rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, with rotate_half's sign folded into `signed_sin` (one roll, no cat)."""
    return torch.addcmul(x * cos, torch.roll(x, x.shape[-1] // 2, dims=-1), signed_sin)


def _attention(attn: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, packing: Packing,
               training: bool, mode: str) -> torch.Tensor:
    """LlamaAttention on packed tokens; `sin` carries rotate_half's sign (see `_rotary`)."""
    size = attn.head_dim
    q = attn.q_proj(hidden).view(hidden.shape[0], -1, size)
    k = attn.k_proj(hidden).view(hidden.shape[0], -1, size)
    v = attn.v_proj(hidden).view(hidden.shape[0], -1, size)
    # The softmax scale rides on the queries' rotary factors: one multiply fewer per layer.
    q = _rotary(q, cos * attn.scaling, sin * attn.scaling)
    ctx = recompute.attention(mode, packing.attention, q, _rotary(k, cos, sin), v, scale=1.0, causal=True,
                            dropout=attn.attention_dropout if training else 0.0)
    return attn.o_proj(ctx.reshape(ctx.shape[0], -1))


def embed(model: nn.Module, inputs: dict[str, torch.Tensor]):
    """(packed embeddings (N, hidden), rotary cos, rotary sin with rotate_half's sign, packing)."""
    packing = Packing.from_mask(inputs["attention_mask"])
    embedded = model.model.embed_tokens(inputs["input_ids"])
    positions = torch.arange(packing.length, device=embedded.device).unsqueeze(0)
    cos, sin = model.model.rotary_emb(embedded, positions)  # (1, L, head_dim)
    half = sin.shape[-1] // 2
    sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    cos = packing.pack(cos.expand(packing.batch, -1, -1)).unsqueeze(1)  # (N, 1, head_dim)
    sin = packing.pack(sin.expand(packing.batch, -1, -1)).unsqueeze(1)
    return packing.pack(embedded), cos, sin, packing


def decode(model: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           packing) -> torch.Tensor:
    """Every layer and the final norm over packed tokens. `packing` is any object with Packing's
    `attention` (the packed trainer passes one spanning several batches)."""
    body = model.model
    layers = body.layers[: model.config.num_hidden_layers]
    if recompute.enabled(model):
        modes = recompute.plan(model, _footprints(model, layers, hidden, packing),
                               outside=loss_bytes(model, hidden))
    else:
        modes = [recompute.KEEP] * len(layers)
    for layer, mode in zip(layers, modes, strict=True):
        hidden = recompute.run(mode, _layer, layer, hidden, cos, sin, packing, model.training, mode)
    return body.norm(hidden)


def _footprints(model: nn.Module, layers, hidden: torch.Tensor, packing) -> list[recompute.LayerBytes]:
    """What each layer keeps for the backward pass (`recompute.LayerBytes`), in elements: the
    attention core H·L per position of the padded rows (the probabilities; 3·H·L under attention
    dropout; none where a fused kernel runs); per real token 3·intermediate (the gate's and up
    projection's outputs and the activation's output) + 3·hidden (the norms' inputs, the rotated
    queries) + what the adapters keep."""
    cfg, tokens, element = model.config, hidden.shape[0], hidden.element_size()
    dropout = getattr(cfg, "attention_dropout", 0.0)
    per_query = cfg.num_attention_heads * packing.length * (3 if dropout else 1)
    if not keeps_probabilities(hidden.device, packing.length):
        per_query = 0
    rest = (3 * cfg.intermediate_size + 3 * cfg.hidden_size) * tokens * element
    return [recompute.LayerBytes(core=per_query * packing.batch * packing.length * element,
                                 rest=rest + recompute.adapter_bytes(layer, tokens, element),
                                 inputs=tokens * cfg.hidden_size * element) for layer in layers]


def loss_bytes(model: nn.Module, hidden: torch.Tensor) -> int:
    """At most what the LM head and loss hold at the step's peak without checkpointing: the logits
    of every token and their log-probabilities, and in the backward pass the gradients of both
    (4 · N · vocabulary). The plan counts it on both sides although the checkpointed loss holds one
    chunk's share: counting the chunk only let it keep 26 of SmolLM2's 30 layers (cores recomputed)
    and the step measured 0.58 of the memory, its estimate of the kept layers being short
    (bench/RESULTS.md); counted whole, the chunking is margin below half."""
    return 4 * hidden.shape[0] * model.config.vocab_size * 4


# Under gradient checkpointing the loss runs in chunks of labelled rows whose fp32 logits are at
# most this many bytes (at its peak a chunk holds four rows × vocabulary tensors: logits,
# log-probabilities and both gradients, so 128 MB). 32 MB is 170 rows of SmolLM2's 49,152-word
# vocabulary: still a GEMM wide enough to run at full speed, and the ~1.6 GB its full loss holds at
# 8 × 256 tokens comes down to a twelfth, about two of its layers' kept activations.
LOSS_CHUNK_BYTES = 32 * 2**20


def loss_chunk_rows(vocab: int) -> int:
    """Labelled rows per chunk of the checkpointed loss (`LOSS_CHUNK_BYTES` of fp32 logits)."""
    return max(1, LOSS_CHUNK_BYTES // (4 * vocab))


def _layer(layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, packing,
           training: bool, mode: str) -> torch.Tensor:
    hidden = hidden + _attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, packing, training,
                                 mode)
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def packed_hidden(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Packing]:
    """Final-norm hidden states of the real tokens (N, hidden), and their packing."""
    hidden, cos, sin, packing = embed(model, inputs)
    return decode(model, hidden, cos, sin, packing), packing


def labelled_rows(inputs: dict[str, torch.Tensor], packing: Packing) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed rows whose next token is labelled, those next tokens)."""
    targets = inputs["labels"][:, 1:]
    b, t = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    return packing.compact_positions(b * packing.length + t), targets[b, t]


def causal_lm_loss(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions (labels -100 elsewhere)."""
    hidden, packing = packed_hidden(model, inputs)
    rows, targets = labelled_rows(inputs, packing)
    selected = hidden.index_select(0, rows)
    if recompute.enabled(model):
        return _chunked_loss(model.get_output_embeddings(), selected, targets, model.config.vocab_size)
    logits = model.get_output_embeddings()(selected)
    return F.cross_entropy(logits.float(), targets)


def _chunked_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, vocab: int) -> torch.Tensor:
    """The same mean cross-entropy, the head and loss run on `loss_chunk_rows` rows at a time, each
    chunk recomputed in the backward pass: only one chunk's vocabulary-wide tensors are ever alive
    (a chunk keeps its input rows; the head's weight, tied to the input embedding in SmolLM2, gets
    its gradient through each recompute like any parameter)."""
    size = loss_chunk_rows(vocab)
    total = None
    for start in range(0, hidden.shape[0], size):
        part = checkpoint(_summed_loss, head, hidden[start:start + size], targets[start:start + size],
                          use_reentrant=False)
        total = part if total is None else total + part
    if total is None:  # no labelled row: F.cross_entropy's mean over nothing
        return F.cross_entropy(head(hidden).float(), targets)
    return total / hidden.shape[0]


def _summed_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")
