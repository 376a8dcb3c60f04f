"""Files written so that nothing already written is lost: a temp file in the same folder, then
os.replace, so readers see the old file or the new one, never half of one. And file names made
safe from user text, in one place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import uuid
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp path in path's folder to write to; moved over path only if the block succeeds,
    so readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and os.replace, so readers see old or new only."""
    with atomic_file(path) as temp:
        # os.open with 0o666 honours the umask, unlike tempfile's private 0o600 files.
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """JSON with indent 2, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def atomic_save_image(path: str | Path, pil_image: Image.Image, **save_kwargs: Any) -> None:
    """PIL save in the format its suffix names, written atomically."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"no image format for suffix {path.suffix!r}: {path}")
    buffer = io.BytesIO()
    pil_image.save(buffer, format=image_format, **save_kwargs)
    atomic_write_bytes(path, buffer.getvalue())


def safe_file_names(names: list[str]) -> list[str]:
    """File-name-safe, distinct versions of names a user typed (COCO keeps the real names): every
    file name built from user text goes through here."""
    safe_names: list[str] = []
    for index, name in enumerate(names):
        base = _UNSAFE_FILE_CHARS.sub("_", name).strip("._") or f"structure{index + 1}"
        safe, number = base, 1
        while safe in safe_names:
            number += 1
            safe = f"{base}_{number}"
        safe_names.append(safe)
    return safe_names


def read_json_object(path: Path) -> dict | None:
    """A JSON object an earlier run wrote, or None when the file is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def write_zip(path: Path, folder: Path, names: list[str]) -> None:
    """Zip folder/name for each name, atomically; PNG and JPEG are stored (already compressed)."""
    with atomic_file(path) as temp, zipfile.ZipFile(temp, "w") as bundle:
        for name in names:
            compression = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
            bundle.write(folder / name, name, compress_type=compression)


def writer_threads() -> int:
    """Half this process's CPUs, 2 to 8: a 24 MP photo's masks, PNGs and overlay take 0.3-0.9 s
    of one CPU (`sam2pal bench --io`), many times what the model takes for it on a GPU, so a GPU
    box needs several writers to keep up, and a laptop keeps a core for the model."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(2, min(8, cpus // 2))


class BackgroundWrites:
    """Runs write tasks on worker threads so that upsampling masks and encoding PNGs and JPEGs
    (numpy, PIL and zlib release the GIL) overlap the model's work. As many tasks wait as run,
    so the model is held back only when the writers fall behind; a failed task's error comes out
    of the next submit or of wait(), so a full disk still stops the run."""

    def __init__(self, workers: int | None = None) -> None:
        workers = workers or writer_threads()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sam2pal-write")
        self._pending: deque[Future] = deque()
        self._ahead = 2 * workers

    def submit(self, task: Callable[[], None]) -> None:
        while self._pending and (len(self._pending) >= self._ahead or self._pending[0].done()):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(task))

    def wait(self) -> None:
        """Every task submitted so far has finished (the first error is raised)."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
