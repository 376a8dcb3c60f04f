"""sam2pal web app entry point (also the Hugging Face Space's app_file).

    python app.py [--host 127.0.0.1] [--port 7860] [--model tiny] [--image-size 1024] [--device auto]

Each flag can also be set as an environment variable with a SAM2PAL_ prefix (SAM2PAL_MODEL…).
"""

from __future__ import annotations

import argparse
import os

from sam2pal.ui.app import AppConfig, build_app


def main() -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=env("SAM2PAL_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("SAM2PAL_PORT", "7860")))
    parser.add_argument("--model", default=env("SAM2PAL_MODEL", AppConfig.model))
    parser.add_argument("--image-size", type=int, default=int(env("SAM2PAL_IMAGE_SIZE", str(AppConfig.image_size))))
    parser.add_argument("--device", default=env("SAM2PAL_DEVICE", AppConfig.device))
    args = parser.parse_args()
    app = build_app(AppConfig(model=args.model, image_size=args.image_size, device=args.device))
    app.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
