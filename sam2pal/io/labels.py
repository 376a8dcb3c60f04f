"""Labelled specimens for supervised fine-tuning: a COCO file of specimens someone segmented.

They come from the review tab's corrections or from another tool, and load like templates (same
COCO reading, same image matching by file name, here in the specimen folder), but their
structures must be the templates' own: a label of another name has nothing to be learnt from.
"""

from __future__ import annotations

from pathlib import Path

from sam2pal.errors import SamPalError
from sam2pal.io.images import DEFAULT_MAX_PIXELS
from sam2pal.io.templates import ImageRole, TemplateSet, load_coco_templates

LABELLED_IMAGES = ImageRole("labelled specimen", "--images")


def load_labels(json_path: str | Path, images: str | Path, structures: list[str],
                max_pixels: int = DEFAULT_MAX_PIXELS) -> TemplateSet:
    """The labelled specimens of `json_path`, found in the folder `images` (or next to the JSON),
    with `structures` (the templates') in their order. A structure a label does not annotate is
    not annotated there (no loss), as on a template."""
    labels = load_coco_templates(json_path, images, max_pixels, LABELLED_IMAGES, absent_only=True)
    unknown = [name for name in labels.structures if name not in structures]
    if unknown:
        raise SamPalError(f"--labels {json_path}: categor{'y' if len(unknown) == 1 else 'ies'} "
                          f"{', '.join(repr(n) for n in unknown)} not among the templates' structures "
                          f"({', '.join(structures)}); rename or drop {'it' if len(unknown) == 1 else 'them'}")
    return TemplateSet(structures=list(structures), templates=labels.templates, warnings=labels.warnings)
