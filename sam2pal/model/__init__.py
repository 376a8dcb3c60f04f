"""SAM2 models: building them from any source, and the adapters fine-tuning adds to them."""
