"""An adapter library: one small adapter per collection (a genus, a view, an imaging setup).

A museum segments many collections; one adapter per collection means learning a new one never
changes an earlier one's results, and each costs about a megabyte (the SAMCL idea). Beside each
adapter the library keeps reference embeddings of the photos it was trained on, from which
`engine.selector` picks the adapter for a new photo. This module alone reads and writes the
index, `library.json`.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sam2pal.errors import SamPalError
from sam2pal.io.files import atomic_write_json
from sam2pal.model.adapters import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config

INDEX_NAME = "library.json"
REFERENCES_NAME = "references.npy"
_FORMAT = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class LibraryEntry:
    name: str
    base_model: str
    base_fingerprint: str
    size_bytes: int  # the adapter's weights file
    added: str  # ISO date
    structures: list[str]
    trained_on: dict  # templates and labels, as the adapter's validation.json says, and the reference photos
    references: int  # reference embeddings kept for the selector


class AdapterLibrary:
    """A library folder; it is created by the first `add`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def entries(self) -> list[LibraryEntry]:
        index = self.folder / INDEX_NAME
        if not index.is_file():
            return []
        try:
            data = json.loads(index.read_text())
            return [LibraryEntry(**entry) for entry in data["adapters"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SamPalError(f"{index} is not a sam2pal adapter library index ({exc}); "
                              "rebuild the library with `sam2pal adapters add`") from exc

    def entry(self, name: str) -> LibraryEntry:
        for entry in self.entries():
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.entries()) or "none"
        raise SamPalError(f"no adapter {name!r} in {self.folder} (it has: {known}); see `sam2pal adapters list`")

    def adapter_dir(self, name: str) -> Path:
        return self.folder / self.entry(name).name

    def references(self, name: str) -> np.ndarray:
        return np.load(self.adapter_dir(name) / REFERENCES_NAME)

    def add(self, name: str, adapter_dir: str | Path, references: np.ndarray, photos: list[str]) -> LibraryEntry:
        """Copy the adapter in under `name` with its reference embeddings (N, C), staged and then
        renamed into place, and list it in the index; an existing name is refused."""
        if not _NAME.fullmatch(name):
            raise SamPalError(f"adapter name {name!r}: use letters, digits, '.', '_' or '-' (at most 64), "
                              "starting with a letter or digit")
        adapter_dir = Path(adapter_dir)
        config = read_adapter_config(adapter_dir)
        entries = self.entries()
        if any(e.name == name for e in entries):
            raise SamPalError(f"{self.folder} already has an adapter {name!r}; remove it first or pick another name")
        if entries and entries[0].base_fingerprint != config.base_fingerprint:
            raise SamPalError(f"{adapter_dir} was trained on {config.base_model}, the library's adapters on "
                              f"{entries[0].base_model}; keep one library per base model")
        validation = adapter_dir / "validation.json"
        trained = json.loads(validation.read_text()) if validation.is_file() else {}
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f".{name}.adding"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for file_name in (WEIGHTS_NAME, CONFIG_NAME):
            shutil.copy2(adapter_dir / file_name, staging / file_name)
        np.save(staging / REFERENCES_NAME, np.asarray(references, dtype=np.float32))
        shutil.rmtree(self.folder / name, ignore_errors=True)  # not in the index: left by an interrupted add or remove
        staging.rename(self.folder / name)
        entry = LibraryEntry(
            name=name, base_model=config.base_model, base_fingerprint=config.base_fingerprint,
            size_bytes=(self.folder / name / WEIGHTS_NAME).stat().st_size,
            added=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            structures=list(config.structures),
            trained_on={"templates": trained.get("trained_on"), "labels": (trained.get("labels") or {}).get("trained_on"),
                        "reference_photos": photos},
            references=int(len(references)))
        self._write(entries + [entry])
        return entry

    def remove(self, name: str) -> None:
        entries = self.entries()
        self.entry(name)
        self._write([e for e in entries if e.name != name])  # the index first: a half-removed folder is not listed
        shutil.rmtree(self.folder / name)

    def _write(self, entries: list[LibraryEntry]) -> None:
        atomic_write_json(self.folder / INDEX_NAME, {"format": _FORMAT, "adapters": [asdict(e) for e in entries]})
