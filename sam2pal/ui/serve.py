"""The web app's command line: `python app.py …` and `sam2pal serve …` take the same flags.

Every flag can also be set as an environment variable with a SAM2PAL_ prefix (SAM2PAL_MODEL,
SAM2PAL_BACKEND…), which is how a Space is configured.
"""

from __future__ import annotations

import argparse
import os

from backends import get_backend
from sam2pal.ui.app import AppConfig, build_app, launch_options
from sam2pal.ui.workspace import Limits, Workspaces


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog=prog, description="sam2pal web app")
    parser.add_argument("--host", default=env("SAM2PAL_HOST", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 in Docker)")
    parser.add_argument("--port", type=int, default=int(env("SAM2PAL_PORT", "7860")), help="default 7860")
    parser.add_argument("--model", default=env("SAM2PAL_MODEL", AppConfig.model),
                        help="default model of every run (see `sam2pal predict --help`; synthetic:256 works offline)")
    parser.add_argument("--models", default=env("SAM2PAL_MODELS", ""),
                        help="comma-separated models users may pick per run, besides --model (e.g. tiny,small,large)")
    parser.add_argument("--image-size", type=int, default=int(env("SAM2PAL_IMAGE_SIZE", str(AppConfig.image_size))),
                        help="default model input size (1024; 256 for synthetic:256)")
    parser.add_argument("--device", default=env("SAM2PAL_DEVICE", AppConfig.device), help="auto|cpu|cuda|mps")
    parser.add_argument("--backend", default=env("SAM2PAL_BACKEND", "local"), help="local, zerogpu, remote, ray or a plugin")
    parser.add_argument("--remote-url", default=env("SAM2PAL_REMOTE_URL"), help="for --backend remote")
    parser.add_argument("--ray-address", default=env("SAM2PAL_RAY_ADDRESS"),
                        help="for --backend ray: the cluster (auto, ray://host:10001); default a local Ray")
    parser.add_argument("--max-images", type=int, default=int(env("SAM2PAL_MAX_IMAGES", "500")),
                        help="images per batch a session may upload")
    parser.add_argument("--max-file-size", default=env("SAM2PAL_MAX_FILE_SIZE", "100mb"), help="per uploaded file")
    parser.add_argument("--adapter-library", default=env("SAM2PAL_ADAPTER_LIBRARY"), metavar="DIR",
                        help="an adapter library (`sam2pal adapters add`): the Segment tab then offers "
                             "'library (automatic)', one adapter picked per photo")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    args = parse_args(argv, prog)
    options = {"url": args.remote_url} if args.backend == "remote" else {}
    if args.backend == "ray":
        options = {"address": args.ray_address}
    config = AppConfig(model=args.model, image_size=args.image_size, device=args.device,
                       models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
                       limits=Limits(max_images=args.max_images), max_file_size=args.max_file_size,
                       adapter_library=args.adapter_library)
    workspaces = Workspaces()
    app = build_app(config, get_backend(args.backend, **options), workspaces)
    app.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, **launch_options(config, workspaces)
    )
