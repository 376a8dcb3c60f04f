"""One browser session's files: template images, their structure masks, specimens, job folders.

Everything lives on disk under a random folder, found again through an unguessable token kept in
the browser, so a reload re-attaches to the same work and one user never sees another's files.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sam2pal.errors import SamPalError
from sam2pal.io.images import IMAGE_EXTENSIONS, load_image
from sam2pal.io.files import atomic_save_image, atomic_write_json, safe_file_names
from sam2pal.io.templates import Template, TemplateSet, load_coco_templates, save_coco_templates


MAX_ADAPTER_BYTES = 1 << 30  # far above any LoRA or decoder adapter; a zip bomb stops here


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


@dataclass
class Limits:
    """What one session may upload: per-file size is enforced by Gradio, these by us."""

    max_images: int = 500
    max_zip_bytes: int = 2 << 30
    max_zip_files: int = 2000


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        for sub in ("templates", "masks", "specimens", "jobs"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # --- structures and templates -------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.root / "state.json"

    def _state(self) -> dict:
        if self._state_file.is_file():
            return json.loads(self._state_file.read_text())
        return {"structures": [], "jobs": {}}

    def _save_state(self, state: dict) -> None:
        atomic_write_json(self._state_file, state)

    @property
    def structures(self) -> list[str]:
        return self._state()["structures"]

    def set_structures(self, names: list[str]) -> None:
        clean = [n.strip() for n in names if n.strip()]
        if len(set(clean)) != len(clean):
            raise SamPalError("two structures have the same name; give each its own")
        state = self._state()
        state["structures"] = clean
        self._save_state(state)

    def template_names(self) -> list[str]:
        return sorted(p.name for p in (self.root / "templates").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)

    def add_template_images(self, paths: list[str]) -> list[str]:
        added = []
        for path in paths:
            load_image(path)  # refuse what cannot be read, with the file named
            target = self._new_file(self.root / "templates", Path(path).name)
            shutil.copy(path, target)
            added.append(target.name)
        return added

    @staticmethod
    def stored_name(name: str) -> str:
        """The name an uploaded file named `name` is kept under: a client chose it, so its stem
        is made safe (no folders, no odd characters); the extension stays."""
        path = Path(Path(name).name)
        stem = safe_file_names([path.stem])[0] if path.stem.isascii() else f"image-{_digest(path.stem)}"
        return stem + path.suffix.lower()

    def _new_file(self, folder: Path, name: str) -> Path:
        return folder / self.stored_name(name)

    def template_path(self, name: str) -> Path:
        """A template image of this session by name; any other name (a path, say) is refused."""
        if name not in self.template_names():
            raise SamPalError(f"template {name!r} is not in this session; upload it first")
        return self.root / "templates" / name

    def template_image(self, name: str) -> np.ndarray:
        return load_image(self.template_path(name))

    def _mask_path(self, template: str, structure: str) -> Path:
        """One file per (template, structure); both names come from users, so both are cleaned."""
        structures = self.structures
        if structure not in structures:
            raise SamPalError(f"{structure!r} is not one of this session's structures: {', '.join(structures)}")
        safe = f"{safe_file_names([structure])[0]}-{_digest(structure)}"  # its own name alone decides
        self.template_path(template)
        return self.root / "masks" / f"{Path(template).stem}__{safe}.png"

    def set_mask(self, template: str, structure: str, mask: np.ndarray | None) -> None:
        path = self._mask_path(template, structure)
        if mask is None or not mask.any():
            path.unlink(missing_ok=True)
            return
        atomic_save_image(path, Image.fromarray(mask.astype(np.uint8) * 255))

    def mask(self, template: str, structure: str) -> np.ndarray | None:
        path = self._mask_path(template, structure)
        return np.asarray(Image.open(path)) > 0 if path.is_file() else None

    def template_set(self) -> TemplateSet:
        """The annotated templates as the engine takes them; images without a mask are left out."""
        templates = []
        for name in self.template_names():
            masks = {s: m for s in self.structures if (m := self.mask(name, s)) is not None}
            if masks:
                templates.append(Template(name, self.template_path(name), self.template_image(name), masks))
        if not templates:
            raise SamPalError("no template has a mask yet: draw at least one structure and press Save masks")
        missing = [s for s in self.structures if not any(s in t.masks for t in templates)]
        if missing:
            raise SamPalError(f"no template has a mask for {', '.join(missing)}: draw it or remove it from the structures")
        return TemplateSet(list(self.structures), templates)

    def save_templates_coco(self) -> Path:
        path = self.root / "templates" / "templates.json"
        save_coco_templates(self.template_set(), path)
        return path

    def import_coco(self, json_path: str, image_paths: list[str]) -> TemplateSet:
        """Templates from a COCO file and its images (uploaded together)."""
        staging = Path(tempfile.mkdtemp(dir=self.root))
        for path in image_paths:
            shutil.copy(path, staging / Path(path).name)
        template_set = load_coco_templates(json_path, staging)
        self.set_structures(list(dict.fromkeys(self.structures + list(template_set.structures))))
        for template in template_set.templates:
            target = self._new_file(self.root / "templates", template.name)
            shutil.copy(template.path, target)
            for structure, mask in template.masks.items():
                self.set_mask(target.name, structure, mask)
        shutil.rmtree(staging)
        return template_set

    # --- specimens ----------------------------------------------------------------------------

    def specimen_dir(self) -> Path:
        return self.root / "specimens"

    def add_specimens(self, paths: list[str], limits: Limits) -> int:
        """Copy uploaded photos (or the images inside uploaded zips) into the specimen folder."""
        for path in paths:
            if Path(path).suffix.lower() == ".zip":
                extract_zip(Path(path), self.specimen_dir(), limits)
            elif Path(path).suffix.lower() in IMAGE_EXTENSIONS:
                shutil.copy(path, self._new_file(self.specimen_dir(), path))
        count = len(self.specimens())
        if count > limits.max_images:
            raise SamPalError(f"{count} images is more than this server allows per batch ({limits.max_images})")
        return count

    def store_adapter(self, archive: str | Path) -> Path:
        """Keep the adapter of an uploaded adapter.zip (its two files only, wherever they sit in
        the zip) as this session's uploaded adapter."""
        target = self.root / "uploaded_adapter"
        staging = Path(tempfile.mkdtemp(dir=self.root))  # complete, then put in place
        try:
            with zipfile.ZipFile(archive) as bundle:
                for member in bundle.infolist():
                    name = Path(member.filename).name
                    if name not in ("adapter_model.safetensors", "adapter_config.json"):
                        continue
                    if member.file_size > MAX_ADAPTER_BYTES:
                        raise SamPalError(f"{Path(archive).name}: {name} unpacks to {member.file_size:,} bytes, more "
                                          f"than an adapter ({MAX_ADAPTER_BYTES:,} at most); upload the adapter.zip "
                                          "a fine-tune produced")
                    with bundle.open(member) as source, open(staging / name, "wb") as out:
                        shutil.copyfileobj(source, out)
        except zipfile.BadZipFile as exc:
            shutil.rmtree(staging)
            raise SamPalError(f"{Path(archive).name} is not a zip file: upload the adapter.zip a fine-tune produced") from exc
        except SamPalError:
            shutil.rmtree(staging)
            raise
        if not (staging / "adapter_config.json").is_file() or not (staging / "adapter_model.safetensors").is_file():
            shutil.rmtree(staging)
            raise SamPalError(f"{Path(archive).name} holds no adapter_config.json and adapter_model.safetensors: "
                              "upload the adapter.zip a fine-tune produced")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    def uploaded_adapter(self) -> Path | None:
        target = self.root / "uploaded_adapter"
        return target if (target / "adapter_config.json").is_file() else None

    def specimen_path(self, name: str) -> Path:
        """A specimen photo of this session by name; any other name is refused."""
        path = self.specimen_dir() / name
        if path not in self.specimens():
            raise SamPalError(f"specimen {name!r} is not in this session")
        return path

    def specimens(self) -> list[Path]:
        return sorted(p for p in self.specimen_dir().iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)

    def clear_specimens(self) -> None:
        shutil.rmtree(self.specimen_dir())
        self.specimen_dir().mkdir()

    # --- jobs ---------------------------------------------------------------------------------

    def job_dir(self) -> Path:
        path = self.root / "jobs" / secrets.token_hex(6)
        path.mkdir(parents=True)
        return path

    def remember_job(self, kind: str, job_id: str) -> None:
        state = self._state()
        state["jobs"][kind] = job_id
        self._save_state(state)

    def job(self, kind: str) -> str | None:
        return self._state()["jobs"].get(kind)


def _free_name(target: Path, inside: str, taken: list[Path]) -> Path:
    """Where a zip member goes: its safe base name; one already taken (a/x.jpg, then b/x.jpg)
    gets its folder in front, then a number, so no image of the zip overwrites another."""
    out = target / Workspace.stored_name(inside)
    if out in taken:
        out = target / Workspace.stored_name(inside.strip("/").replace("/", "_"))
    number = 2
    while out in taken:
        out = out.with_name(f"{Path(Workspace.stored_name(inside)).stem}-{number}{out.suffix}")
        number += 1
    return out


def extract_zip(archive: Path, target: Path, limits: Limits) -> list[Path]:
    """Images from a zip, flattened into `target`: no path traversal (names are reduced to their
    base name, made safe as an upload's are; a repeated name gets its folder in front), no zip bomb (total uncompressed size and file count are capped before reading)."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_EXTENSIONS
                       and not Path(m.filename).name.startswith((".", "__MACOSX"))]
            if len(members) > limits.max_zip_files:
                raise SamPalError(f"{archive.name} holds {len(members)} images; the limit is {limits.max_zip_files}")
            total = sum(m.file_size for m in members)
            if total > limits.max_zip_bytes:
                raise SamPalError(f"{archive.name} unpacks to {total / 1e9:.1f} GB; the limit is "
                                  f"{limits.max_zip_bytes / 1e9:.1f} GB — upload fewer images at a time")
            written, budget = [], limits.max_zip_bytes
            for member in members:
                out = _free_name(target, member.filename.replace("\\", "/"), written)
                with bundle.open(member) as source, open(out, "wb") as sink:
                    while block := source.read(1 << 20):
                        budget -= len(block)  # headers can lie about sizes: count what is read
                        if budget < 0:
                            raise SamPalError(f"{archive.name} unpacks to more than its header says; refused")
                        sink.write(block)
                written.append(out)
            return written
    except zipfile.BadZipFile as exc:
        raise SamPalError(f"{archive.name} is not a readable zip file ({exc}); zip the images again") from exc


class Workspaces:
    """Token -> workspace, with old sessions' folders removed after `max_age` seconds idle.

    Every request asks for its workspace (a page whose job runs, once a second), so the folders
    are swept for old sessions at most every `sweep_interval` seconds, not on each request. A page
    left open with nothing running and nothing clicked for `max_age` loses its session.
    """

    def __init__(self, root: Path | None = None, max_age: float = 24 * 3600, sweep_interval: float = 60.0):
        self.root = root or Path(tempfile.mkdtemp(prefix="sam2pal_sessions_"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age = max_age
        self.sweep_interval = sweep_interval
        self._next_sweep = 0.0
        self._lock = threading.Lock()

    def get(self, token: str | None) -> tuple[str, Workspace]:
        """The workspace for `token`, or a new one (with a new token) if unknown."""
        with self._lock:
            if time.monotonic() >= self._next_sweep:
                self._sweep()
                self._next_sweep = time.monotonic() + self.sweep_interval
            if token and all(c in "0123456789abcdef" for c in token) and (self.root / token).is_dir():
                (self.root / token).touch()
                return token, Workspace(self.root / token)
            token = secrets.token_hex(16)
            return token, Workspace(self.root / token)

    def _sweep(self) -> None:
        now = time.time()
        for folder in self.root.iterdir():
            if folder.is_dir() and now - folder.stat().st_mtime > self.max_age:
                shutil.rmtree(folder, ignore_errors=True)
