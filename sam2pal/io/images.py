"""Reading specimen photos as RGB arrays, whatever format and mode the museum exported them in.

Every failure a user can fix (missing file, truncated download, non-image, huge scan) becomes a
one-line SamPalError naming the file, so a batch run can report it and move on.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from sam2pal.errors import SamPalError

_EXTENSIONS_IN_ORDER = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(_EXTENSIONS_IN_ORDER)
DEFAULT_MAX_PIXELS = 100_000_000

_HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# What each EXIF orientation asks a viewer to do to the stored pixels to show them upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_bomb_check_lock = threading.Lock()
_bomb_check_users = 0
_saved_pil_limit: int | None = None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@contextmanager
def _without_pil_bomb_check() -> Iterator[None]:
    """Let PIL decode up to our own cap instead of its fixed ~89 MP limit.

    We compare the header's pixel count with max_pixels ourselves, so PIL's global check is
    switched off while any load is running and restored when the last one ends (counted, so
    loads in parallel threads do not restore it under each other).
    """
    global _bomb_check_users, _saved_pil_limit
    with _bomb_check_lock:
        if _bomb_check_users == 0:
            _saved_pil_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _bomb_check_users += 1
    try:
        yield
    finally:
        with _bomb_check_lock:
            _bomb_check_users -= 1
            if _bomb_check_users == 0:
                Image.MAX_IMAGE_PIXELS = _saved_pil_limit


def _check_is_file(path: Path) -> None:
    if path.is_dir():
        raise SamPalError(
            f"expected an image file but got a folder: {path}; pass the image file itself"
        )
    if not path.exists():
        raise SamPalError(f"image not found: {path}; check the path")


@contextmanager
def _open_header(path: Path) -> Iterator[Image.Image]:
    """Open lazily (only the header is read until .load()) from a file we close ourselves, so the
    decoded image outlives the file without an extra copy."""
    _check_is_file(path)
    try:
        with path.open("rb") as file:
            yield Image.open(file)
    except UnidentifiedImageError as error:
        raise SamPalError(
            f"not an image or an unsupported format: {path}; convert it to JPEG, PNG or TIFF"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise SamPalError(
            f"cannot read image {path} ({_one_line(error)}); check that it is a complete image file"
        ) from error


def _orientation(image: Image.Image) -> int:
    """EXIF orientation from the header only (PNG may keep EXIF after the pixels; PIL would decode
    the whole image to find it, so such a late chunk is not looked for)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    value = image.getexif().get(ExifTags.Base.Orientation, 1)
    return value if isinstance(value, int) else 1


@dataclass(frozen=True)
class ImageHeader:
    """Stored size and EXIF orientation: annotation tools disagree on which frame they draw in,
    so template loading needs both the raw and the upright size."""

    raw_size: tuple[int, int]
    orientation: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) upright, as load_image returns the image."""
        width, height = self.raw_size
        return (height, width) if self.orientation in _SWAPPING_ORIENTATIONS else (width, height)


def _check_pixel_cap(path: Path, image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise SamPalError(
            f"image too large: {path} has {width * height:,} pixels ({width}x{height}), "
            f"over the cap of {max_pixels:,}; raise the pixel cap (--max-pixels) or downscale "
            "the image"
        )


def _decode(path: Path, image: Image.Image, upright: bool) -> None:
    try:
        image.load()
        if upright:
            ImageOps.exif_transpose(image, in_place=True)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise SamPalError(
            f"cannot decode image {path} ({_one_line(error)}); the file is truncated or "
            "corrupt, export or copy it again"
        ) from error


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decoded, EXIF-upright PIL image in its own mode (first page of a TIFF).

    Shared by load_image and by mask loading, which needs the raw mode (alpha, 16-bit).
    """
    path = Path(path)
    with _without_pil_bomb_check(), _open_header(path) as image:
        _check_pixel_cap(path, image, max_pixels)
        _decode(path, image, upright=True)
        return image


def verify_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as load_image would return it, after reading every byte of the image.

    A truncated file only shows when it is decoded, so this decodes; JPEGs at 1/8 scale (their
    DCT allows it), which reads the whole stream at a fraction of the cost, so checking a
    folder of 40 MP photos before a run stays quick.
    """
    path = Path(path)
    with _without_pil_bomb_check(), _open_header(path) as image:
        _check_pixel_cap(path, image, max_pixels)
        header = ImageHeader(raw_size=image.size, orientation=_orientation(image))
        if image.format == "JPEG":
            width, height = image.size
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        _decode(path, image, upright=False)
    return header.size


def _composite_on_white(image: Image.Image) -> np.ndarray:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def _scale_to_8bit(image: Image.Image) -> np.ndarray:
    """Stretch the image's own min..max to 0..255: 16-bit scans rarely use the full range."""
    values = np.array(image, dtype=np.float32)  # float32 and in place: 100 MP scans are common
    low, high = float(values.min()), float(values.max())
    if high > low:
        values -= low
        values *= 255.0 / (high - low)
        gray = np.rint(values, out=values).astype(np.uint8)
    else:
        gray = np.zeros(values.shape, dtype=np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        return _scale_to_8bit(image)
    if image.has_transparency_data:
        return _composite_on_white(image)
    if image.mode == "RGB":
        return np.asarray(image)
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as error:
        raise SamPalError(
            f"unsupported colour mode {image.mode} in image {path}; save it as 8-bit RGB"
        ) from error


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """H×W×3 uint8 RGB, upright per EXIF, transparency composited on white; writable."""
    path = Path(path)
    rgb = _to_rgb(open_image(path, max_pixels), path)
    # Arrays viewed from PIL's buffer are read-only; callers may draw on or normalise in place.
    return rgb if rgb.flags.writeable else rgb.copy()


@dataclass
class Photo:
    """A photo decoded no larger than its uses need, and the size of the whole photo."""

    image: np.ndarray  # H×W×3 uint8 RGB, upright, at `scale` of the full photo
    size: tuple[int, int]  # (width, height) of the full upright photo: masks are made at this size

    @property
    def full_shape(self) -> tuple[int, int]:
        return self.size[1], self.size[0]


def working_scale(size: tuple[int, int], min_side: int, review_side: int | None) -> float:
    """Largest reduction that keeps the short side >= min_side (the model's input) and the long
    side >= review_side (overlays, the editor); 1.0 when review_side is None (full size asked)."""
    if review_side is None:
        return 1.0
    short, long = min(size), max(size)
    return min(1.0, max(min_side / short, review_side / long))


def load_photo(path: str | Path, min_side: int, review_side: int | None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """The photo at `working_scale`: a JPEG is decoded straight at a DCT scale (1/2, 1/4, 1/8)
    at least that large, then every format is resized to the scale, so a 24 MP photo never
    stays in memory at full size. EXIF orientation and the pixel cap as in load_image."""
    path = Path(path)
    with _without_pil_bomb_check(), _open_header(path) as image:
        _check_pixel_cap(path, image, max_pixels)
        size = ImageHeader(raw_size=image.size, orientation=_orientation(image)).size
        scale = working_scale(size, min_side, review_side)
        target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        if scale < 1.0 and image.format == "JPEG":
            raw = image.size
            image.draft(image.mode, (math.ceil(raw[0] * scale), math.ceil(raw[1] * scale)))
        _decode(path, image, upright=True)
        if image.size != target and image.mode == "RGB":  # other modes after conversion
            image = image.resize(target, Image.BILINEAR, reducing_gap=2.0)
        rgb = _to_rgb(image, path)
    if rgb.shape[1::-1] != target:
        rgb = np.asarray(Image.fromarray(rgb).resize(target, Image.BILINEAR, reducing_gap=2.0))
    return Photo(rgb if rgb.flags.writeable else rgb.copy(), size)


def image_header(path: str | Path) -> ImageHeader:
    """Size and orientation from the header alone (no pixel is decoded)."""
    path = Path(path)
    with _open_header(path) as image:
        return ImageHeader(raw_size=image.size, orientation=_orientation(image))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as load_image would return it, from the header alone."""
    return image_header(path).size


def orient_mask(mask: np.ndarray, orientation: int) -> np.ndarray:
    """A bool mask drawn on the stored pixels, turned the way EXIF turns the photo upright."""
    method = _UPRIGHT.get(orientation)
    if method is None:
        return mask
    return np.asarray(Image.fromarray(np.asarray(mask, dtype=bool)).transpose(method), dtype=bool)


@dataclass(frozen=True)
class SkippedFile:
    """A folder entry that is not read as an image, and why (reported, never silently lost)."""

    path: Path
    reason: str


@dataclass
class ImageFolder:
    """What a folder of specimen photos holds: the images to read and everything else."""

    folder: Path
    images: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def require_images(self) -> list[Path]:
        """The images, or the error a user sees for a folder without any."""
        if not self.images:
            raise SamPalError(
                f"no images ({', '.join(_EXTENSIONS_IN_ORDER)}) in {self.folder}; "
                "put the photos there or pass another folder to --images"
            )
        return self.images


def _skip_reason(entry: Path) -> str | None:
    if entry.is_dir():
        return "a folder (subfolders are not searched)"
    if entry.suffix.lower() not in IMAGE_EXTENSIONS:
        kind = f" ({entry.suffix})" if entry.suffix else ""
        return f"not an image file{kind}; only {', '.join(_EXTENSIONS_IN_ORDER)} files are read"
    if not entry.is_file():
        return "not a regular file"
    return None


def scan_images(folder: str | Path) -> ImageFolder:
    """Sort the entries directly in folder into images and skipped files, both by name.

    Hidden files (.DS_Store, ._photo.jpg from macOS) are left out without a note: they are
    never photos and a note per file would bury the ones that matter.
    """
    folder = Path(folder)
    if not folder.exists():
        raise SamPalError(f"image folder not found: {folder}; pass an existing folder to --images")
    if not folder.is_dir():
        raise SamPalError(f"not a folder: {folder}; pass an existing folder to --images")
    result = ImageFolder(folder)
    for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if entry.name.startswith("."):
            continue
        reason = _skip_reason(entry)
        if reason is None:
            result.images.append(entry)
        else:
            result.skipped.append(SkippedFile(entry, reason))
    return result


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in folder, sorted by name, hidden files skipped."""
    return scan_images(folder).require_images()
