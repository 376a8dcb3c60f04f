"""sam2pal: segment the same structures on a whole specimen collection from a few templates.

The public API (`load_model`, `load_templates`, `finetune`, `predict`, …) lives in `sam2pal.api`
and is imported on first use, so `sam2pal.io` and the web UI load without torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

__all__ = ["__version__", "TrainConfig", "finetune", "load_adapter", "load_model", "load_templates", "predict"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("sam2pal.api"), name)
    raise AttributeError(f"module 'sam2pal' has no attribute {name!r}")
