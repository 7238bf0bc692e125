"""Adapter folders: everything that reads, writes, checks or imports one (no torch here).

    io.py         save_adapter / load_adapter: the PEFT files of a model's LoRA (torch)
    folder.py     the folder's file names, lorafleet.json, the classifier head (torch-free)
    check.py      "is this folder a usable adapter?" without torch: config, header, dtypes
    importing.py  a foreign (PEFT) adapter checked against its base before it is registered
    modelcard.py  the Hub model card (README.md) written beside the files
    digest.py     the folder's sha256 and size, and the check of both before a load
"""
