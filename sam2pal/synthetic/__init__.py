"""Synthetic specimens with known masks: no real photos or pretrained weights ship with sam2pal.

- `simple`: one fixed drawing style, for plumbing tests and speed benchmarks.
- `taxa`, `render`, `domains`: several body plans under varied pose, lighting, backgrounds and
  clutter, to pretrain and evaluate the small synthetic SAM2 (`--model synthetic:…`).
"""

from sam2pal.synthetic.simple import STRUCTURES, draw_specimen, write_collection

TRAINED_ON = "trained on synthetic specimens only"  # said by every output of a synthetic model

__all__ = ["STRUCTURES", "TRAINED_ON", "draw_specimen", "write_collection"]
