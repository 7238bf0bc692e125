"""lora_engine: our own LoRA for Hugging Face transformers models.

Importing the package is cheap (no torch): the training spec and the task catalog are used by the
CLI at submission time. Heavy modules (layers, recipe, ...) import torch themselves.
"""
