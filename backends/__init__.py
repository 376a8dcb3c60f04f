"""Plugin backends: where sam2pal jobs run. Found through the entry-point group
`sam2pal.backends`, so a third party adds one without editing the app."""

from __future__ import annotations

from importlib.metadata import entry_points

from backends.base import Backend

GROUP = "sam2pal.backends"


def available() -> dict[str, object]:
    """Backend name -> entry point, for every installed backend."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def get_backend(name: str, **options) -> Backend:
    """Instantiate the backend registered under `name`."""
    found = available()
    if name not in found:
        names = ", ".join(sorted(found)) or "none (is sam2pal installed with pip install -e .?)"
        raise ValueError(f"--backend {name!r} is not installed; available: {names}")
    return found[name].load()(**options)
