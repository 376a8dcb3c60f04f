"""A first web app: upload templates and specimens, segment them, download COCO.

Each click runs `sam2pal predict` in a separate worker process inside a fresh per-request
workspace, so a crash or out-of-memory error in the model never takes the web server down and
one user's files are never visible to another.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr


@dataclass
class AppConfig:
    model: str = "facebook/sam2.1-hiera-tiny"
    image_size: int = 1024
    device: str = "auto"
    batch_size: int = 4


def _copy(files: list[str] | None, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, folder / Path(f).name)) for f in files or []]


def _zip(out: Path) -> Path:
    archive = out.parent / "sam2pal_results.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(out.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(out))
    return archive


def segment(config: AppConfig, template_json: str | None, template_images: list[str] | None,
            specimens: list[str] | None):
    """Run one prediction job; return overlays, the COCO file, a zip and a status line."""
    if not template_json:
        raise gr.Error("Upload a COCO template file (its categories are the structures).")
    if not template_images or not specimens:
        raise gr.Error("Upload the template image(s) and at least one specimen photo.")
    work = Path(tempfile.mkdtemp(prefix="sam2pal_job_"))
    templates = _copy([template_json], work / "templates")[0]
    _copy(template_images, work / "templates")
    _copy(specimens, work / "specimens")
    out = work / "out"
    command = [sys.executable, "-m", "sam2pal.cli", "predict", "--templates", str(templates),
               "--images", str(work / "specimens"), "--out", str(out), "--model", config.model,
               "--image-size", str(config.image_size), "--device", config.device,
               "--batch-size", str(config.batch_size), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True)
    messages = [line.removeprefix("error: ") for line in result.stderr.splitlines()
                if line.startswith(("error: ", "failed: "))]
    if result.returncode == 2 or not (out / "predictions.json").is_file():
        raise gr.Error(messages[-1] if messages else f"prediction failed (exit {result.returncode})")
    overlays = sorted(str(p) for p in (out / "overlays").iterdir())
    status = f"{len(overlays)} specimens segmented" + (f"; {len(messages)} failed: " + "; ".join(messages) if messages else "")
    return overlays, str(out / "predictions.json"), str(_zip(out)), status


def build_app(config: AppConfig) -> gr.Blocks:
    with gr.Blocks(title="sam2pal", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# sam2pal\nSegment the structures of your template specimens on a whole collection.")
        with gr.Row():
            template_json = gr.File(label="Template COCO file", file_types=[".json"])
            template_images = gr.File(label="Template image(s)", file_count="multiple", file_types=["image"])
            specimens = gr.File(label="Specimen photos", file_count="multiple", file_types=["image"])
        run = gr.Button("Segment collection", variant="primary")
        status = gr.Textbox(label="Status", interactive=False)
        gallery = gr.Gallery(label="Overlays", columns=4)
        with gr.Row():
            coco = gr.File(label="predictions.json (COCO)")
            bundle = gr.File(label="All results (zip)")
        run.click(
            lambda *inputs: segment(config, *inputs),
            inputs=[template_json, template_images, specimens],
            outputs=[gallery, coco, bundle, status],
            api_name="predict",
            concurrency_limit=1,
        )
    return app
