"""load_image / image_size / list_images on synthetic files of every mode users send us."""

from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from sam2pal.errors import SamPalError
from sam2pal.io.images import (
    IMAGE_EXTENSIONS,
    image_header,
    image_size,
    list_images,
    load_image,
    load_photo,
    orient_mask,
    scan_images,
    verify_image,
)

WIDTH, HEIGHT = 64, 48


def _save_rotated_jpeg(path: Path) -> None:
    """64x48 stored, orientation 6 (display rotated 90° clockwise), red block top-left."""
    pixels = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    pixels[:16, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)


def test_exif_rotated_jpeg_is_returned_upright(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    _save_rotated_jpeg(path)

    image = load_image(path)

    assert image.shape == (WIDTH, HEIGHT, 3)
    assert image.dtype == np.uint8
    # Rotating 90° clockwise moves the stored top-left block to the top-right corner.
    assert np.abs(image[4, HEIGHT - 5].astype(int) - (255, 0, 0)).max() < 20
    assert np.abs(image[4, 4].astype(int) - (255, 255, 255)).max() < 20


def test_image_size_applies_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    _save_rotated_jpeg(path)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (WIDTH, HEIGHT)).save(plain)

    assert image_size(path) == (HEIGHT, WIDTH)
    assert image_size(plain) == (WIDTH, HEIGHT)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    pixels = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    pixels[..., :3] = (0, 0, 255)
    pixels[:, :32, 3] = 255
    pixels[:, 32:, 3] = 0
    pixels[0, 40] = (0, 0, 0, 128)
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, "RGBA").save(path)

    image = load_image(path)

    assert tuple(image[10, 10]) == (0, 0, 255)
    assert tuple(image[10, 50]) == (255, 255, 255)
    assert tuple(image[0, 40]) == (127, 127, 127)


def test_palette_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    palette_image = Image.new("P", (WIDTH, HEIGHT), 0)
    palette_image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette_image.paste(1, (0, 0, 10, 10))
    path = tmp_path / "palette.png"
    palette_image.save(path, transparency=0)

    image = load_image(path)

    assert tuple(image[5, 5]) == (0, 200, 0)
    assert tuple(image[30, 30]) == (255, 255, 255)


def test_sixteen_bit_tiff_is_scaled_by_its_range(tmp_path: Path) -> None:
    values = np.full((HEIGHT, WIDTH), 1200, dtype=np.uint16)
    values[0, 0] = 1000
    values[0, 1] = 1510
    path = tmp_path / "scan.tif"
    Image.fromarray(values).save(path)
    with Image.open(path) as stored:
        assert stored.mode.startswith("I;16")

    image = load_image(path)

    assert tuple(image[0, 0]) == (0, 0, 0)
    assert tuple(image[0, 1]) == (255, 255, 255)
    assert tuple(image[10, 10]) == (100, 100, 100)


def test_grayscale_and_bilevel_become_rgb(tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.new("L", (WIDTH, HEIGHT), 77).save(gray)
    bilevel = tmp_path / "bilevel.bmp"
    Image.new("1", (WIDTH, HEIGHT), 1).save(bilevel)

    assert tuple(load_image(gray)[3, 3]) == (77, 77, 77)
    assert load_image(gray).flags.writeable
    assert tuple(load_image(bilevel)[3, 3]) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (WIDTH, HEIGHT), (0, 255, 255, 0)).save(path, quality=95)

    image = load_image(path)

    assert image.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(image[20, 20].astype(int) - (255, 0, 0)).max() < 20


def test_first_page_of_multipage_tiff(tmp_path: Path) -> None:
    path = tmp_path / "pages.tiff"
    first = Image.new("RGB", (WIDTH, HEIGHT), (10, 20, 30))
    first.save(path, save_all=True, append_images=[Image.new("RGB", (8, 8), (200, 0, 0))])

    image = load_image(path)

    assert image.shape == (HEIGHT, WIDTH, 3)
    assert tuple(image[0, 0]) == (10, 20, 30)


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(noise).save(whole)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(SamPalError, match=r"cut\.jpg.*truncated or corrupt"):
        load_image(truncated)


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("specimen notes, not a photo\n")

    with pytest.raises(SamPalError, match=r"not an image.*notes\.jpg.*convert it to JPEG"):
        load_image(path)


def test_missing_file_and_folder_are_reported(tmp_path: Path) -> None:
    with pytest.raises(SamPalError, match=r"image not found: .*absent\.png; check the path"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(SamPalError, match=r"got a folder: .*; pass the image file itself"):
        load_image(tmp_path)


def test_pixel_cap_is_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (WIDTH, HEIGHT)).save(path)

    with pytest.raises(SamPalError, match=r"big\.png has 3,072 pixels .*cap of 1,000; raise"):
        load_image(path, max_pixels=1000)


def test_images_over_pil_limit_but_under_our_cap_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "scan.png"
    Image.new("RGB", (WIDTH, HEIGHT), (1, 2, 3)).save(path)
    # 3,072 pixels is over twice this limit, where PIL itself would raise DecompressionBombError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    image = load_image(path, max_pixels=10_000)

    assert tuple(image[0, 0]) == (1, 2, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_list_images_sorted_filtered_not_recursive(tmp_path: Path) -> None:
    for name in ["b.JPG", "a.png", "c.tiff", ".hidden.jpg", "notes.txt", "d.webp"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.jpg").write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()

    names = [path.name for path in list_images(tmp_path)]

    assert names == ["a.png", "b.JPG", "c.tiff", "d.webp"]
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(SamPalError, match=r"nowhere; pass an existing folder to --images"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "file.jpg").write_bytes(b"")
    with pytest.raises(SamPalError, match=r"not a folder: .*file\.jpg; pass an existing folder"):
        list_images(tmp_path / "file.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(SamPalError, match=r"no images \(\.jpg, \.jpeg, \.png.*\) in .*empty"):
        list_images(empty)


def test_webp_and_bmp_load(tmp_path: Path) -> None:
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[:, : WIDTH // 2] = (200, 40, 10)
    Image.fromarray(pixels).save(tmp_path / "a.webp", lossless=True)
    Image.fromarray(pixels).save(tmp_path / "a.bmp")

    for name in ("a.webp", "a.bmp"):
        image = load_image(tmp_path / name)
        assert image.shape == (HEIGHT, WIDTH, 3)
        assert tuple(image[5, 5]) == (200, 40, 10) and tuple(image[5, WIDTH - 5]) == (0, 0, 0)


def test_sixteen_bit_png_is_scaled_by_its_range(tmp_path: Path) -> None:
    values = np.full((HEIGHT, WIDTH), 30000, dtype=np.uint16)
    values[0, 0] = 20000
    values[0, 1] = 40000
    Image.fromarray(values).save(tmp_path / "scan.png")

    image = load_image(tmp_path / "scan.png")

    assert tuple(image[0, 0]) == (0, 0, 0) and tuple(image[0, 1]) == (255, 255, 255)
    assert tuple(image[9, 9]) == (128, 128, 128)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_mask_turns_like_the_photo(tmp_path: Path, orientation: int) -> None:
    """A mask drawn on the stored pixels, oriented, lands where load_image puts those pixels."""
    stored = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    stored[2:9, 3:20] = 255
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    path = tmp_path / "photo.png"
    Image.fromarray(stored).save(path, exif=exif.tobytes())

    upright = load_image(path)[:, :, 0] > 127
    mask = orient_mask(stored[:, :, 0] > 127, orientation)

    assert mask.shape == upright.shape == (image_size(path)[1], image_size(path)[0])
    assert np.array_equal(mask, upright)


def test_image_header_keeps_stored_size_and_orientation(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    _save_rotated_jpeg(path)

    header = image_header(path)

    assert header.raw_size == (WIDTH, HEIGHT) and header.orientation == 6
    assert header.size == (HEIGHT, WIDTH)


def test_verify_image_reads_every_byte(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (HEIGHT * 4, WIDTH * 4, 3), dtype=np.uint8)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(noise).save(whole)
    (tmp_path / "cut.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    rotated = tmp_path / "rotated.jpg"
    _save_rotated_jpeg(rotated)

    assert verify_image(whole) == (WIDTH * 4, HEIGHT * 4)
    assert verify_image(rotated) == (HEIGHT, WIDTH)
    with pytest.raises(SamPalError, match=r"cut\.jpg.*truncated or corrupt"):
        verify_image(tmp_path / "cut.jpg")
    with pytest.raises(
        SamPalError,
        match=r"whole\.jpg has 49,152 pixels .*cap of 1,000; raise the pixel cap \(--max-pixels\)",
    ):
        verify_image(whole, max_pixels=1000)


def test_scan_images_notes_what_it_does_not_read(tmp_path: Path) -> None:
    for name in ["b.jpg", "a.PNG", "notes.txt", "README", ".DS_Store", "._b.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "raw").mkdir()

    folder = scan_images(tmp_path)

    assert [path.name for path in folder.images] == ["a.PNG", "b.jpg"]
    assert [(entry.path.name, entry.reason) for entry in folder.skipped] == [
        (
            "README",
            "not an image file; only .jpg, .jpeg, .png, .tif, .tiff, .bmp, .webp files are read",
        ),
        (
            "notes.txt",
            "not an image file (.txt); only .jpg, .jpeg, .png, .tif, .tiff, .bmp, .webp files are read",
        ),
        ("raw", "a folder (subfolders are not searched)"),
    ]


def _smooth_photo(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1).astype(np.uint8)


def test_load_photo_decodes_a_big_jpeg_at_the_size_its_uses_need(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    pixels = _smooth_photo(3000, 2000)
    Image.fromarray(pixels).save(path, quality=92)

    photo = load_photo(path, min_side=256, review_side=1024)

    assert photo.size == (3000, 2000) and photo.full_shape == (2000, 3000)  # masks are made at full size
    assert photo.image.shape == (683, 1024, 3)  # long side at review size; the short side >= 256
    full = np.asarray(Image.fromarray(load_image(path)).resize((1024, 683), Image.BILINEAR), dtype=np.int16)
    assert np.abs(photo.image.astype(np.int16) - full).mean() < 2.0
    assert load_photo(path, min_side=1024, review_side=256).image.shape == (1024, 1536, 3)  # the model's need wins
    assert load_photo(path, min_side=256, review_side=None).image.shape == (2000, 3000, 3)  # full size asked


def test_load_photo_turns_upright_scales_every_format_and_keeps_the_cap(tmp_path: Path) -> None:
    stored = _smooth_photo(1600, 1200)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(stored).save(rotated, exif=exif.tobytes(), quality=92)
    photo = load_photo(rotated, 64, 400)
    assert photo.size == (1200, 1600) and photo.image.shape == (400, 300, 3)
    upright = np.asarray(Image.fromarray(load_image(rotated)).resize((300, 400), Image.BILINEAR), dtype=np.int16)
    assert np.abs(photo.image.astype(np.int16) - upright).mean() < 3.0

    png = tmp_path / "scan.png"
    Image.fromarray(stored).save(png)
    assert load_photo(png, 64, 800).image.shape == (600, 800, 3)
    with pytest.raises(SamPalError, match="image too large: .*scan.png"):
        load_photo(png, 64, 800, max_pixels=1000)
