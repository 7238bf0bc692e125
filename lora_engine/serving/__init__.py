"""Serving: every tenant's adapters from one resident base, rows of different adapters in one batch.

- layer.py: `ServedLinear`, a resident base layer routing each row through its own adapter.
- adapter.py: an adapter folder read and checked for serving (`ServedAdapter`, its bytes).
- sampling.py: `Sampling` (max_tokens, temperature, top_p, stop ids, seed) and per-row draws.
- base.py: `ServedBase`, the resident base: classify in one forward, generate with a shared KV
  cache whose rows join and leave between decode steps.
"""

from lora_engine.serving.base import ClassifyResult, ServedBase, Token
from lora_engine.serving.sampling import GREEDY, Sampling

__all__ = ["GREEDY", "ClassifyResult", "Sampling", "ServedBase", "Token"]
