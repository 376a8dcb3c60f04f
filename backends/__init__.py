"""Plugin backends: where sam2pal jobs run. Found through the entry-point group
`sam2pal.backends`, so a third party adds one without editing the app."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from backends.base import Backend

GROUP = "sam2pal.backends"
# the backends shipped here, found even when the app runs from a checkout that was not
# pip-installed (as on a Hugging Face Space)
BUILT_IN = {
    "local": "backends.local:LocalBackend",
    "remote": "backends.remote:RemoteBackend",
    "zerogpu": "backends.zerogpu:ZeroGPUBackend",
    "ray": "backends.ray_cluster:RayBackend",
}


def available() -> dict[str, EntryPoint]:
    """Backend name -> entry point: the built-in ones and every installed plugin."""
    found = {name: EntryPoint(name, value, GROUP) for name, value in BUILT_IN.items()}
    found.update({ep.name: ep for ep in entry_points(group=GROUP)})
    return found


def get_backend(name: str, **options) -> Backend:
    """Instantiate the backend registered under `name`."""
    found = available()
    if name not in found:
        names = ", ".join(sorted(found))
        raise ValueError(f"--backend {name!r} is not installed; available: {names}")
    return found[name].load()(**options)
