"""Packed training: several jobs' LoRA adapters trained in one padding-free pass over one frozen base.

- routing.py: which rows belong to which job; each job's own RNG stream; per-job dropout.
- layer.py: `MultiLoRALinear`, one base linear with K jobs' adapters, rows routed by job.
- forward.py: the packed encoder/decoder forward, one loss per job.
- trainer.py: `Pack`, the per-job training state (the recipe's own pieces) around packed steps.
"""

from lora_engine.packed.trainer import Outcome, Pack

__all__ = ["Outcome", "Pack"]
