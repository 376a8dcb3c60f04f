"""sam2pal: segment the same structures on a whole specimen collection from a few templates."""

__version__ = "0.1.0"

from sam2pal.api import TrainConfig, finetune, load_adapter, load_model, load_templates, predict  # noqa: E402

__all__ = ["__version__", "TrainConfig", "finetune", "load_adapter", "load_model", "load_templates", "predict"]
