"""The Fine-tune tab's handlers: start a fine-tune (optionally from the review's corrections
and from the previous adapter), show its progress and validation, suggest the next template,
and take an uploaded adapter. A part of `SamPalApp` (it uses the app's sessions and backend)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from sam2pal.errors import SamPalError
from sam2pal.io.corrections import corrections_as_labels
from sam2pal.io.run_report import REPORT_NAME, RunReport
from sam2pal.jobs import JobStatus
from sam2pal.ui.workspace import Workspace


class FineTuneHandlers:
    def start_training(self, epochs: float, mode: str, lr: str | None, image_size: str, model: str,
                       use_corrections: bool, from_previous: bool, token: str) -> str:
        """Queue a fine-tune; with `use_corrections` the structures corrected in the latest
        segmentation are labels (supervised steps, palindromes on the other specimens), with
        `from_previous` it starts from the adapter fine-tuned here. Both paths are the server's."""
        ws = self._ws(token)
        train = {"epochs": int(epochs), "mode": mode}
        if lr and str(lr).strip():
            try:
                train["lr"] = float(lr)
            except ValueError as exc:
                raise gr.Error(f"learning rate {lr!r} is not a number; write e.g. 2e-4, or leave it empty") from exc
        previous = self._adapter_dir(ws) if from_previous else None
        if from_previous and previous is None:
            raise gr.Error("No finished fine-tune in this session to start from; untick 'start from the previous adapter'.")
        spec = self._spec(ws, "train", image_size=int(image_size), train=train, model=model)
        if previous is not None:
            spec.train["init_adapter"] = str(previous)
        if use_corrections:
            results = self._results_dir(self._status(ws, "predict"))
            names = corrections_as_labels(results, Path(spec.workdir) / "labels.json") if results else []
            if not names:
                raise gr.Error("No corrections yet: correct structures in the review (tab 3), or untick "
                               "'use my corrections'.")
            spec.labels = str(Path(spec.workdir) / "labels.json")
        try:
            job_id = self.backend.start(spec)
        except SamPalError as exc:
            raise gr.Error(str(exc)) from exc
        ws.remember_job("train", job_id)
        return "Fine-tuning queued…" + (f" ({len(names)} corrected specimens as labels)" if use_corrections else "")

    @staticmethod
    def _results_dir(predict: JobStatus | None) -> Path | None:
        return Path(predict.files["report"]).parent if predict and predict.state == "done" else None

    def corrections_note(self, token: str) -> str:
        ws = self._ws(token)
        return self._corrections_note(ws, self._status(ws, "predict"))

    def _corrections_note(self, ws: Workspace, predict: JobStatus | None) -> str:
        """How many corrected specimens the latest segmentation has, and which specimen to
        annotate next as a template: the worst by the quality check among those not corrected."""
        results = self._results_dir(predict)
        if results is None:
            return "Corrections made in the review (tab 3) can be used here as labels."
        corrected, order = self._review_state(results)
        templates = set(ws.template_names())
        worst = [name for name in order if name not in corrected and name not in templates]
        note = f"**{len(corrected)} corrected specimen(s)** in the latest segmentation can be used as labels."
        if worst:
            note += (f" Suggested next template: **{worst[0]}** (the lowest quality-check score among the specimens "
                     "not corrected: annotating it covers what the templates miss most).")
        return note

    def training_view(self, token: str):
        return self._training_view(self._status(self._ws(token), "train"))

    def _training_view(self, status: JobStatus | None):
        """Progress line, loss curve, per-structure validation against zero-shot, adapter file."""
        if status is None:
            return "No fine-tune yet.", None, None, None
        steps = [e for e in status.events if e["type"] == "step"]
        loss = {"step": [e["step"] for e in steps], "loss": [e["loss"] for e in steps]}
        table = self._validation_table([e for e in status.events if e["type"] == "epoch"])
        line = f"{status.state}: {status.message}" + (f" — {status.error}" if status.error else "")
        adapter = status.files.get("adapter_zip") if status.state == "done" else None
        return line, {"step": loss["step"], "loss": loss["loss"]} if steps else None, table or None, adapter

    def _review_state(self, results: Path) -> tuple[list[str], list[str]]:
        """Corrected files and the review order of a run, read again only when its report
        changed (the page asks on every tick of its timer)."""
        path = results / REPORT_NAME
        modified = path.stat().st_mtime_ns
        cached = self._reviews.get(str(path))
        if cached is None or cached[0] != modified:
            report = RunReport.read(results)
            corrected = [e["file"] for e in report.segmented()
                         if any(s.get("corrected") for s in e["structures"].values())]
            cached = self._reviews[str(path)] = (modified, (corrected, report.data.get("review_order", [])))
        return cached[1]

    @staticmethod
    def _validation_table(epochs: list[dict]) -> list[list]:
        """Per structure, side by side: zero-shot, the adapter started from (if any), and the
        best epoch so far (what is kept)."""
        if not epochs:
            return []
        first = epochs[0]
        previous = "base_validation_iou" in first
        zero = first.get("base_validation_iou") or first.get("validation_iou") or {}
        kept = ([e for e in epochs if e.get("kept")] or epochs)[-1]
        rows = []
        for name in zero:
            rows.append([name, round(zero[name], 4),
                         round(first["validation_iou"][name], 4) if previous else None,
                         round((kept.get("validation_iou") or {}).get(name, float("nan")), 4)])
        return rows

    def upload_adapter(self, archive: str | None, token: str) -> str:
        if not archive:
            return "No adapter uploaded."
        try:
            self._ws(token).store_adapter(archive)
        except SamPalError as exc:
            raise gr.Error(str(exc)) from exc
        return "Adapter uploaded; choose 'uploaded' when segmenting."
