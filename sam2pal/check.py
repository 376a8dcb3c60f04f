"""`sam2pal check`: are these templates and this image folder usable, before hours of training?

Loads the templates exactly as training and prediction will, and decodes every specimen photo,
so that a wrong file name, a two-point polygon or a truncated download shows up now. The
command line prints the report; the web app shows the same report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sam2pal.errors import SamPalError
from sam2pal.io.images import DEFAULT_MAX_PIXELS, scan_images, verify_image
from sam2pal.io.templates import load_templates


@dataclass
class TemplateSummary:
    """One template as it will be used: its size and, per structure, the annotated pixels."""

    name: str
    path: str
    width: int
    height: int
    areas: dict[str, int]
    absent: list[str]
    not_annotated: list[str]


@dataclass
class FileNote:
    """A file of the image folder and what is wrong with it or why it is left out."""

    file: str
    message: str


@dataclass
class CheckReport:
    """Everything check found; `problems` are what make the input unusable."""

    structures: list[str] = field(default_factory=list)
    templates: list[TemplateSummary] = field(default_factory=list)
    images_folder: str | None = None
    images: list[str] = field(default_factory=list)
    unreadable: list[FileNote] = field(default_factory=list)
    skipped: list[FileNote] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "usable": self.usable}


def _check_templates(
    report: CheckReport,
    templates: str | Path | None,
    template_images: str | Path | None,
    template_image: str | Path | None,
    masks: dict[str, str | Path] | None,
    max_pixels: int,
) -> None:
    try:
        template_set = load_templates(templates, template_images, template_image, masks, max_pixels)
    except SamPalError as error:
        report.problems.append(str(error))
        return
    report.structures = list(template_set.structures)
    report.warnings += template_set.warnings
    for template in template_set.templates:
        height, width = template.image.shape[:2]
        report.templates.append(
            TemplateSummary(
                name=template.name,
                path=str(template.path),
                width=width,
                height=height,
                areas={
                    name: int(template.masks[name].sum())
                    for name in report.structures
                    if name in template.masks
                },
                absent=[name for name in report.structures if name in template.absent],
                not_annotated=[
                    name
                    for name in report.structures
                    if name not in template.masks and name not in template.absent
                ],
            )
        )


def _check_images(
    report: CheckReport, images: Path, max_pixels: int, progress: Callable[[int, int], None] | None
) -> None:
    report.images_folder = str(images)
    try:
        folder = scan_images(images)
    except SamPalError as error:
        report.problems.append(str(error))
        return
    report.skipped = [FileNote(entry.path.name, entry.reason) for entry in folder.skipped]
    try:
        paths = folder.require_images()
    except SamPalError as error:
        report.problems.append(str(error))
        return
    for done, path in enumerate(paths, start=1):
        try:
            verify_image(path, max_pixels)
            report.images.append(path.name)
        except SamPalError as error:
            report.unreadable.append(FileNote(path.name, str(error)))
        if progress is not None:
            progress(done, len(paths))
    if not report.images:
        report.problems.append(f"none of the {len(paths)} images in {images} can be read")


def check_inputs(
    templates: str | Path | None = None,
    template_images: str | Path | None = None,
    template_image: str | Path | None = None,
    masks: dict[str, str | Path] | None = None,
    images: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check templates (a COCO file, or an image with one mask per structure) and, if given, the
    folder of specimen images; never raises for a problem of the input, it reports it."""
    report = CheckReport()
    if max_pixels < 1:
        report.problems.append(f"--max-pixels {max_pixels} must be at least 1")
        return report
    _check_templates(report, templates, template_images, template_image, masks, max_pixels)
    if images is not None:
        _check_images(report, Path(images), max_pixels, progress)
    return report
