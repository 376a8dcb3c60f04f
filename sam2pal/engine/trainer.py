"""Palindrome fine-tuning: sampling, optimisation, validation that decides, adapters on disk.

Validation, not training loss, picks the adapter kept, and it is held out: with two or more
templates about one in five (at least one) is set aside before training starts. Those templates
are never a palindrome's x0 or loss target; each epoch predicts them from the training
templates' memory. Epoch 0 is the zero-shot baseline, so an adapter is only kept if it beats
doing nothing on data it never trained on (at worst, the saved adapter is the untouched model).

With labelled specimens (`labels`: corrections, or ground truth from another tool) the labels
are split instead: the training part gets supervised steps (`engine.supervised`) beside the
palindromes, every template is memory, and the held-out part, never trained on in any way, is
what validation scores (IoU, Dice, pixel accuracy, boundary F1).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sam2pal.cluster.ddp import Distributed
from sam2pal.engine.allocator import freed_memory_returned
from sam2pal.engine.frames import Encoder, resize_masks
from sam2pal.engine.palindrome import AugmentConfig, augment, palindrome_step, training_mode
from sam2pal.engine.supervised import supervised_step
from sam2pal.engine.train_features import TrainingFeatures
from sam2pal.engine.train_state import load_state, save_state
from sam2pal.engine.train_config import DEFAULT_LR, TrainConfig
from sam2pal.engine.validation import VALIDATION_NAME, Split, score_held_out, write_validation
from sam2pal.errors import SamPalError
from sam2pal.io.templates import TemplateSet
from sam2pal.model.adapters import (AdapterConfig, check_base, load_weights, prepare, read_adapter_config, save_adapter,
                                    trainable_state)
from sam2pal.model.build import LoadedModel, describe

LOG_NAME = "train_log.jsonl"
# tensors one structure saves for backward in a palindrome step at 1024 px (measured, LoRA,
# SAM2.1-tiny); it scales with the number of image tokens, (S/16)²
ACTIVATIONS_PER_STRUCTURE_1024 = 1.34e9
CPU_ACTIVATION_BUDGET = 1 << 30


@dataclass
class TrainResult:
    adapter_dir: Path
    best_epoch: int
    validation: list[dict]  # one entry per epoch, epoch 0 = zero-shot
    validated: bool  # False with a single template: the last epoch is kept


Event = dict
ProgressFn = Callable[[Event], None]


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise SamPalError("--tensorboard needs TensorBoard: pip install 'sam2pal[tensorboard]'") from error
    return SummaryWriter(log_dir=str(folder))


def learning_rate_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(1, total - warmup)))


def _trained_labels(adapter_dir: Path) -> set[str]:
    """Labels the adapter in `adapter_dir` was trained on, from its validation.json."""
    path = Path(adapter_dir) / VALIDATION_NAME
    if not path.is_file():
        return set()
    labels = json.loads(path.read_text()).get("labels") or {}
    return set(labels.get("trained_on") or [])


class Trainer:
    """Fine-tunes `loaded.sam` in place on a template set and a folder of unlabeled specimens."""

    def __init__(
        self,
        loaded: LoadedModel,
        template_set: TemplateSet,
        specimens: list[Path],
        out_dir: Path,
        config: TrainConfig,
        resume: Path | None = None,
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        labels: TemplateSet | None = None,
    ):
        if labels is not None and labels.structures != template_set.structures:
            raise SamPalError(f"labels have structures {labels.structures}, the templates {template_set.structures}; "
                              "load them with io.labels.load_labels")
        if config.supervised_only and not (labels and labels.templates):
            raise SamPalError("--supervised-only needs labelled specimens: pass --labels GT.json")
        self.labels = labels
        seen = [t for group in (template_set, labels) if group is not None for t in group.templates]
        taken = {t.name for t in seen} | {t.path.name for t in seen}
        # templates and labelled specimens are never palindrome specimens (held-out labels are
        # not trained on at all)
        self.specimens = [] if config.supervised_only else [p for p in specimens if p.name not in taken]
        resume = Path(resume) if resume is not None else None
        self.loaded = loaded
        self.templates = template_set
        self.out_dir = Path(out_dir)
        self.config = config
        self.progress = progress or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.encoder = Encoder(loaded)
        self.dist = Distributed.from_env(loaded.device)
        # the adapter this run started from (kept through a resume), and the labels it trained on
        self.started_from = config.init_adapter
        if resume is not None and (resume / VALIDATION_NAME).is_file():
            self.started_from = json.loads((resume / VALIDATION_NAME).read_text()).get("init_adapter")
        earlier = _trained_labels(self.started_from) if self.started_from is not None else set()
        self.split = Split.choose(len(template_set.templates), [t.name for t in labels.templates] if labels else [],
                                  config, earlier)
        # what an epoch visits: palindromes on unlabelled specimens, supervised steps on labels
        self.items = [("palindrome", p) for p in self.specimens] + [("label", i) for i in self.split.train_labels]
        if not self.items:
            raise SamPalError("no unlabeled specimens to train on: --images holds only the templates; add specimen photos")
        if resume is not None and config.init_adapter is not None:
            raise SamPalError("--resume continues a run, --init-adapter starts a new one from an adapter: pass one")
        self.adapter = self._adapter_config(resume)
        torch.manual_seed(config.seed)  # LoRA's initial weights come from the global generator
        self.params = prepare(loaded, self.adapter)
        # with --init-adapter epoch 0 validates the adapter started from; the base model (LoRA
        # freshly made is the identity) is scored too, from these tensors
        self.base_state = None
        if config.init_adapter is not None:
            self.base_state = {name: t.clone() for name, t in trainable_state(loaded.sam).items()}  # not views
            load_weights(loaded.sam, config.init_adapter)
        self.base_iou: dict[str, float] | None = None  # per structure, when starting from an adapter
        self._precision_before = loaded.mixed_precision  # given back when the run ends: predictions stay bf16
        if config.precision == "fp16" and loaded.device.type == "cuda":
            loaded.mixed_precision = torch.float16
        # fp16 gradients underflow without loss scaling; bf16 and full precision need none
        self.scaler = torch.amp.GradScaler(loaded.device.type, enabled=loaded.autocast_dtype == torch.float16)
        self.features = TrainingFeatures(self.encoder, template_set, labels, self.adapter.trains_encoder,
                                         config.cache_bytes, config.cache_dir, config.max_pixels,
                                         lambda message: self.progress({"type": "warning", "message": message}))
        # micro-batches per optimiser step over all ranks: two ranks give the step one process
        # accumulating both ranks' micro-batches gives
        self.global_batch = config.accumulate * self.dist.world
        self.steps_per_epoch = config.steps_per_epoch or math.ceil(len(self.items) / self.global_batch)
        total = config.epochs * self.steps_per_epoch
        lr = config.lr if config.lr is not None else DEFAULT_LR[self.adapter.mode]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=config.weight_decay)
        warmup = config.warmup_steps if config.warmup_steps is not None else total // 20
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: learning_rate_factor(
            step, min(warmup, total - 1), total))
        self.board = None  # TensorBoard, opened by rank 0 when the run starts
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        if resume is not None:
            self._restore(resume)

    # --- setup -------------------------------------------------------------------------------

    def _adapter_config(self, resume: Path | None) -> AdapterConfig:
        if resume is not None:
            config = read_adapter_config(resume)
            check_base(self.loaded, config, resume)
            if config.structures != list(self.templates.structures):
                raise SamPalError(
                    f"--resume {resume} was trained on structures {config.structures}, the templates have "
                    f"{list(self.templates.structures)}; resume with the same templates or start a new adapter"
                )
            return config
        if self.config.init_adapter is not None:
            start = read_adapter_config(self.config.init_adapter)
            check_base(self.loaded, start, self.config.init_adapter)
            return replace(start, structures=list(self.templates.structures))
        return AdapterConfig(
            mode=self.config.mode,
            lora_rank=self.config.lora_rank,
            lora_alpha=2 * self.config.lora_rank,
            lora_encoder=self.config.lora_encoder,
            base_model=self.loaded.name,
            base_variant=self.loaded.variant,
            base_fingerprint=self.loaded.fingerprint,
            image_size=self.loaded.image_size,
            structures=list(self.templates.structures),
        )

    def _restore(self, resume: Path) -> None:
        """Continue where `resume` stopped: last weights (not the best), optimizer, schedule, RNG."""
        state = load_state(resume, self.loaded.sam)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        validation = json.loads((resume / VALIDATION_NAME).read_text())
        held_out = [self.templates.templates[i].name for i in self.split.held_out]
        tests = [self.labels.templates[i].name for i in self.split.test_labels] if self.labels else []
        before = validation.get("held_out", held_out), (validation.get("labels") or {}).get("held_out", tests)
        if before != (held_out, tests):
            raise SamPalError(f"--resume {resume} validated on {before[0] + before[1]}, these settings hold out "
                              f"{held_out + tests}; resume with the run's --seed, --folds, --fold and --labels")
        self.history = validation["epochs"]

    # --- validation --------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """IoU per structure on what is held out (`held_out_metrics`)."""
        return self.held_out_metrics()["iou"]

    @torch.no_grad()
    def held_out_metrics(self) -> dict[str, dict[str, float]]:
        """Metric -> structure -> mean over the held-out labelled specimens (every template as
        memory), or without them over the held-out templates (the training templates as memory)."""
        if self.split.test_labels:
            held = [(self.labels, i, self.features.label(i)) for i in self.split.test_labels]
        else:
            held = [(self.templates, i, self.features.template(i)) for i in self.split.held_out]
        return score_held_out(self.encoder, self.templates, self.split.train_templates, held, self.features.cache)

    def _base_model_scores(self) -> dict[str, float]:
        """Held-out IoU per structure of the base model itself, when the run starts from an adapter."""
        started = {name: t.clone() for name, t in trainable_state(self.loaded.sam).items()}
        self.loaded.sam.load_state_dict(self.base_state, strict=False)
        try:
            return self.validate()
        finally:
            self.loaded.sam.load_state_dict(started, strict=False)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        if self.board is not None:
            for name, value in values.items():
                self.board.add_scalar(name, value, step)
            self.board.flush()

    def _record_epoch(self, seconds: float) -> None:
        validated = self.split.validated
        metrics = self.held_out_metrics() if validated else {}
        per_structure = metrics.get("iou", {})
        mean = float(np.mean(list(per_structure.values()))) if per_structure else None
        entry = {"epoch": self.epoch, "validation_iou": per_structure, "mean_iou": mean, "seconds": round(seconds, 3)}
        if self.epoch == 0 and self.base_iou is not None:  # epoch 0 is the adapter started from
            entry["base_validation_iou"] = self.base_iou
            entry["base_mean_iou"] = float(np.mean(list(self.base_iou.values())))
        if self.split.test_labels:  # the labels' test part: every metric, as mean over structures
            entry["test"] = {metric: float(np.mean(list(values.values()))) for metric, values in metrics.items() if values}
        improved = (mean is not None and mean > self.best_score) or not validated
        if improved:
            self.best_score = mean if mean is not None else self.best_score
            self.best_epoch = self.epoch
            save_adapter(self.loaded.sam, self.adapter, self.out_dir)
        entry["kept"] = improved
        self.history.append(entry)
        self._log(entry)
        write_validation(self.out_dir, describe(self.loaded), self.templates, self.labels, self.split, self.config,
                         self.best_epoch, self.history, self.started_from)
        self._scalars({"validation/mean_iou": mean, **{f"validation/{k}": v for k, v in per_structure.items()}}
                      if mean is not None else {}, self.epoch)
        self.progress({"type": "epoch", **entry})

    def _log(self, entry: dict) -> None:
        with open(self.out_dir / LOG_NAME, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def _save_state(self) -> None:
        save_state(self.out_dir, self.loaded.sam, self.optimizer, self.scheduler, self.scaler,
                   {"epoch": self.epoch, "step": self.step, "best_score": self.best_score, "best_epoch": self.best_epoch})

    # --- training ----------------------------------------------------------------------------

    def _micro_generator(self, slot: int) -> torch.Generator:
        """The random stream of micro-batch `slot` of the coming step: the same on whichever rank
        runs it, so the split over ranks does not change what is drawn."""
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step * 1_009 + slot)

    def _palindromes(self, slot: int, specimen: Path) -> tuple[str, list[str], list[float]] | None:
        """One palindrome on a training template, its loss (over the global micro-batch count)
        backpropagated: only the structures it annotates (a mask, or marked absent, which trains
        "absent") are rows; the others add no loss and no memory."""
        generator = self._micro_generator(slot)
        index = self.split.train_templates[int(torch.randint(len(self.split.train_templates), (1,), generator=generator))]
        x1 = self.features.specimen(specimen)
        if x1 is None:
            return None
        if self.config.augment:
            x1 = augment(x1, AugmentConfig(), generator)
        x0 = self.features.template(index)
        annotated = self.templates.annotated(index)
        names = [name for name, used in zip(self.templates.structures, annotated) if used]
        masks = self.templates.mask_stack(index)[np.asarray(annotated)]
        y0 = resize_masks(masks, self.loaded.image_size).to(self.loaded.device)
        per_structure = []
        for rows in torch.arange(y0.shape[0]).split(self._structures_per_pass(y0.shape[0])):
            output = palindrome_step(self.encoder, x0, y0[rows], x1, self.config.cycle_memory)
            self.scaler.scale(output.loss / self.global_batch).backward()
            per_structure += output.per_structure.tolist()
        return self.templates.templates[index].name, names, per_structure

    def _supervised(self, index: int) -> tuple[list[str], list[float]] | None:
        """Labelled specimen `index` predicted from every training template's memory, its loss
        (over the global micro-batch count) backpropagated; None when it annotates nothing a
        template remembers."""
        label = self.features.annotated(self.labels, index, self.features.label(index))
        templates = [self.features.annotated(self.templates, i, self.features.template(i))
                     for i in self.split.train_templates]
        count = len(self.templates.structures)
        names, per_structure = [], []
        for rows in torch.arange(count).split(self._structures_per_pass(count)):
            output = supervised_step(self.encoder, templates, label, rows.tolist(), self.config.loss)
            if output.structures:
                self.scaler.scale(output.loss / self.global_batch).backward()
                names += [self.templates.structures[k] for k in output.structures]
                per_structure += output.per_structure.tolist()
        return (names, per_structure) if names else None

    def _train_step(self, micro_batches: list[tuple[int, tuple[str, Path | int]]]) -> dict | None:
        """One optimiser step: this rank's micro-batches (slot, item), gradients summed over the
        ranks; None when no rank could use any of its items (no step is taken). An item is a
        palindrome on an unlabelled specimen or a supervised step on a labelled one."""
        training_mode(self.loaded.sam)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        losses: dict[str, list[float]] = {}
        templates, specimens, labels = [], [], []
        for slot, (kind, item) in micro_batches:
            if kind == "label":
                done = self._supervised(item)
                if done is not None:
                    labels.append(self.labels.templates[item].name)
            else:
                done = self._palindromes(slot, item)
                if done is not None:
                    template, *done = done
                    templates.append(template)
                    specimens.append(item.name)
            if done is None:
                continue
            names, per_structure = done
            for name, value in zip(names, per_structure):
                losses.setdefault(name, []).append(value)
        self.dist.sum_gradients(self.params)
        mine = [float(np.sum([sum(v) for v in losses.values()])), float(len(specimens) + len(labels))]
        loss, used = self.dist.sum(mine, self.loaded.device)
        if used == 0:
            return None
        self.scaler.unscale_(self.optimizer)  # clipping sees the true gradients
        torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.scaler.step(self.optimizer)  # skipped, and the scale lowered, when fp16 overflowed
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return {
            "step": self.step,
            "epoch": self.epoch,
            "loss": round(loss / used, 6),  # a micro-batch's loss (summed over its structures), mean over the step
            "per_structure": {n: round(float(np.mean(v)), 6) for n, v in losses.items()},  # this rank's
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - start, 4),
            "templates": templates,
            "specimens": specimens,
            "labels": labels,
        }

    def _structures_per_pass(self, count: int) -> int:
        """Structures are independent batch rows and the loss is a sum over them, so splitting a
        step into passes (gradients accumulated) changes nothing but peak memory and speed. A GPU
        runs a full batch faster; on CPU a pass holds as many structures as fit the activation
        budget (all at 256 px, 3 at 512, 1 at 1024), since small passes cost per-call overhead
        and large ones RAM without being faster."""
        if self.adapter.trains_encoder:
            return count  # x0 and x1 carry the encoder's graph: one backward through it per step
        if self.config.structures_per_pass is not None:
            return self.config.structures_per_pass
        if self.config.low_memory:
            return 1
        if self.loaded.device.type == "cuda":
            return count
        per_structure = ACTIVATIONS_PER_STRUCTURE_1024 * (self.loaded.image_size / 1024) ** 2
        return max(1, int(CPU_ACTIVATION_BUDGET // per_structure))

    def _epoch_order(self) -> list[tuple[str, Path | int]]:
        """The epoch's items, steps × global batch of them: a permutation drawn from the seed and
        the epoch alone (every rank draws the same), so one epoch visits every item once and
        later epochs find them all in the feature cache."""
        generator = torch.Generator().manual_seed(self.config.seed * 7_919 + self.epoch)
        need = self.steps_per_epoch * self.global_batch
        order: list[tuple[str, Path | int]] = []
        while len(order) < need:
            order += [self.items[i] for i in torch.randperm(len(self.items), generator=generator)]
        return order[:need]

    def run(self) -> TrainResult:
        try:
            with freed_memory_returned(self.config.low_memory) as applied:
                if self.config.low_memory and not applied:
                    self.progress({"type": "warning", "message": "--low-memory: this C library cannot return "
                                   "freed memory early; only one structure per pass applies"})
                result = self._run()
            self.dist.finish()
            return result
        finally:
            if self.board is not None:
                self.board.close()
            self.loaded.mixed_precision = self._precision_before
            self.features.close()

    def _run(self) -> TrainResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        main = self.dist.main  # rank 0 alone validates, logs and writes
        if main and self.config.tensorboard is not None:
            self.board = _tensorboard(self.config.tensorboard)
        if not self.history and main:
            if self.base_state is not None and self.split.validated:
                self.base_iou = self._base_model_scores()
            self._record_epoch(0.0)  # epoch 0: the zero-shot baseline (or the adapter started from)
        while self.epoch < self.config.epochs and not self.should_stop():
            self.epoch += 1
            start = time.perf_counter()
            order = self._epoch_order()
            for index in range(self.steps_per_epoch):
                if self.should_stop():  # a half-done epoch is neither validated nor saved: resume redoes it
                    self.epoch -= 1
                    break
                batch = order[index * self.global_batch : (index + 1) * self.global_batch]
                entry = self._train_step([(slot, batch[slot]) for slot in self.dist.slots(self.config.accumulate)])
                if entry is not None and main:
                    self._log(entry)
                    self._scalars({"train/loss": entry["loss"], "train/lr": entry["lr"]}, entry["step"])
                    self.progress({"type": "step", "total_steps": self.config.epochs * self.steps_per_epoch, **entry})
            else:
                if main:
                    self._record_epoch(time.perf_counter() - start)
                    self._save_state()
        self.loaded.sam.eval()
        return TrainResult(self.out_dir, self.best_epoch, self.history, self.split.validated)
