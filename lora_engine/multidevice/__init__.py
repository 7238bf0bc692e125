"""One training run across several devices: data parallel ranks (`parallel`), each a process
(`rank`), started and ended together by the caller's process (`launch`), which keeps the hooks."""

from lora_engine.multidevice.launch import train_on_devices

__all__ = ["train_on_devices"]
