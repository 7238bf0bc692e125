"""The packed forward: several jobs' batches through one base in one pass, one loss per job.

Each job's batch is embedded alone (its own padded width, its embedding dropout from its own
stream) and packed padding-free; the packed token lists are concatenated job after job, so every
token-wise operation of the base (projections, norms, MLP) runs once over the real tokens of all
jobs. Attention stays within each job's rows: `SegmentedPacking` runs each job's own `Packing`
on its slice, with that job's width (no padding to the longest job) and its dropout stream. The
heads and losses are per job: loss_k is the mean over job k's own rows, exactly its solo loss, and
since job k's parameters reach no other job's rows, d(Σ loss_k)/dθ_k = d loss_k/dθ_k: one
backward of the sum gives every adapter its solo gradient.

With fused routing (CUDA's default, `Routing.fused`) attention is one call over every job's rows
padded to the widest job (fewer launches, more padded work), and the body's dropout draws once per
site from the round's first job's stream: the gradients are still each job's solo ones (tested),
but with dropout the masks are not the solo run's (the same distribution).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lora_engine.forward import decoder, encoder, logits_loss
from lora_engine.forward.packing import Packing
from lora_engine.packed.routing import JobStream, Routing


@dataclass
class PackedBatch:
    """One job's share of a packed step."""

    key: str
    inputs: dict[str, torch.Tensor]
    kind: str  # classification | regression | generation
    heads: dict[str, nn.Module]  # the job's own head modules by their model name
    stream: JobStream
    pooling: str = "cls"  # what the job's classifier reads (catalog.POOLINGS); one for a whole pack


class SegmentedPacking:
    """Packing's `attention` over the concatenated packed tokens of several jobs."""

    def __init__(self, batches: list[PackedBatch], packings: list[Packing], firsts: list[torch.Tensor],
                 routing: Routing):
        self.batches, self.packings, self.firsts, self.routing = batches, packings, firsts, routing
        # Fused: one attention call over every job's rows, each row padded to the widest job's
        # width (rows never see each other: each is its own batch entry). Fewer launches, more
        # padded work; its dropout draws once, from the first job's stream.
        self.combined = _combined(packings) if routing.fused else None

    def attention(self, q, k, v, *, scale: float, causal: bool, dropout: float = 0.0,
                  query_positions: torch.Tensor | None = None) -> torch.Tensor:
        if self.combined is not None:
            with self.batches[0].stream.active() if dropout else nullcontext():
                return self.combined.attention(q, k, v, scale=scale, causal=causal, dropout=dropout,
                                               query_positions=query_positions)
        qs, ks, vs = (self.routing.split(t) for t in (q, k, v))
        out = []
        for batch, packing, first, (_, qj), (_, kj), (_, vj) in zip(self.batches, self.packings, self.firsts,
                                                                   qs, ks, vs, strict=True):
            args = (qj, kj, vj)
            local = None if query_positions is None else first
            if dropout:
                with batch.stream.active():
                    out.append(packing.attention(*args, scale=scale, causal=causal, dropout=dropout,
                                                 query_positions=local))
            else:
                out.append(packing.attention(*args, scale=scale, causal=causal, query_positions=local))
        return torch.cat(out)


def _combined(packings: list[Packing]) -> Packing:
    """One Packing over all jobs' rows (right-padded to the widest); its real tokens, row-major,
    are the jobs' packed tokens one job after another, the order of the packed batch."""
    width = max(p.length for p in packings)
    mask = torch.cat([F.pad(p.key_mask, (0, width - p.length)) for p in packings])
    return Packing.from_mask(mask)


def family(model: nn.Module) -> str:
    """'encoder' or 'decoder': which of our packed forwards a base model takes."""
    name = type(model).__name__
    if name in encoder.SUPPORTED:
        return "encoder"
    if name == "LlamaForCausalLM":
        return "decoder"
    from lora_engine.errors import LoraConfigError

    raise LoraConfigError(
        f"packed training supports BERT/RoBERTa sequence classification and Llama-family causal LMs, "
        f"not {name}; train this job alone"
    )


def packed_losses(model: nn.Module, batches: list[PackedBatch], routing: Routing) -> list[torch.Tensor]:
    """One scalar loss per batch, each the mean over that batch's rows (its solo loss)."""
    routing.streams = {b.key: b.stream for b in batches}
    try:
        if family(model) == "encoder":
            return _encoder_losses(model, batches, routing)
        return _decoder_losses(model, batches, routing)
    finally:
        routing.clear()


def _embed_each(model, batches: list[PackedBatch], embed):
    """embed(model, inputs) per job, under the job's stream (its embedding dropout)."""
    out = []
    for b in batches:
        if model.training:
            with b.stream.active():
                out.append(embed(model, b.inputs))
        else:
            out.append(embed(model, b.inputs))
    return out


def _encoder_losses(model, batches, routing):
    """With "cls" pooling the last layer runs for each row's first token only, as alone; with
    "mean" it runs for every token and each job's rows are averaged over their own tokens. A pack
    pools one way (`Pack.check`): a [CLS] job beside a mean one would run its last layer, and
    draw that layer's dropout, for every token, unlike alone."""
    for b in batches:
        if not encoder.supports(model, b.inputs):
            raise ValueError(f"job {b.key}: batch layout not supported by the packed encoder forward")
    poolings = {b.pooling for b in batches}
    if len(poolings) != 1:
        raise ValueError(f"one packed step pools one way, not {sorted(poolings)}")
    mean = poolings == {"mean"}
    embedded = _embed_each(model, batches, encoder.embed)
    hidden = torch.cat([h for h, _, _ in embedded])
    packings = [p for _, p, _ in embedded]
    tokens = [h.shape[0] for h, _, _ in embedded]
    rows = [p.batch for p in packings]
    keys = [b.key for b in batches]
    layouts = [tokens] if mean else [tokens, rows]  # mean: no first-token-only last layer
    routing.set(keys, *layouts)
    offsets = torch.tensor([0, *tokens[:-1]], device=hidden.device).cumsum(0)
    firsts = [f for _, _, f in embedded]
    first = None if mean else torch.cat([f + o for f, o in zip(firsts, offsets, strict=True)])
    states = encoder.encode(model, hidden, SegmentedPacking(batches, packings, firsts, routing), first)
    pooler = f"{model.base_model_prefix}.pooler"
    losses = []
    for b, packing, (_, part) in zip(batches, packings, routing.split(states), strict=True):
        pooled = packing.row_means(part) if mean else part
        with b.stream.active():
            logits = encoder.head_logits(model, pooled, classifier=b.heads["classifier"],
                                         pooler=b.heads.get(pooler))
        losses.append(logits_loss(logits, b.inputs["labels"], b.kind))
    return losses


def _decoder_losses(model, batches, routing):
    for b in batches:
        if not decoder.supports(model, b.inputs):
            raise ValueError(f"job {b.key}: batch layout not supported by the packed decoder forward")
    embedded = _embed_each(model, batches, decoder.embed)
    hidden = torch.cat([e[0] for e in embedded])
    cos = torch.cat([e[1] for e in embedded])
    sin = torch.cat([e[2] for e in embedded])
    packings = [e[3] for e in embedded]
    tokens = [p.batch * p.length if p.index is None else p.index.numel() for p in packings]
    routing.set([b.key for b in batches], tokens)
    states = decoder.decode(model, hidden, cos, sin,
                            SegmentedPacking(batches, packings, [None] * len(batches), routing))
    rows, targets, counts, offset = [], [], [], 0
    for b, p, n in zip(batches, packings, tokens, strict=True):
        r, t = decoder.labelled_rows(b.inputs, p)
        rows.append(r + offset)
        targets.append(t)
        counts.append(r.numel())
        offset += n
    # One pass of the vocabulary-wide head over every job's labelled rows; the loss per job.
    logits = model.get_output_embeddings()(states.index_select(0, torch.cat(rows))).float()
    return [F.cross_entropy(part, t) for part, t in zip(logits.split(counts), targets, strict=True)]
