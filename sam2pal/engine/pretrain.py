"""Pretraining the small synthetic SAM2 from random weights, through the engine's own paths.

Each step draws fresh synthetic collections (never an evaluation seed): one or two templates with
their masks become the conditioning memory, a specimen of the same collection is tracked from it
(`condition_on_mask` → `track`, exactly as propagation runs), and the loss compares it with the
specimen's true masks. The same specimen is also segmented from clicks alone (`prompt`), so the
web app's click assist learns too. Data depends only on (seed, step), so a resumed run sees what
an uninterrupted one would have.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from sam2pal.engine.frames import Encoder, Frame, preprocess, resize_masks
from sam2pal.engine.losses import LossWeights, hard_iou, mask_loss, supervised_loss
from sam2pal.engine.palindrome import training_mode
from sam2pal.engine.tracking import condition_on_mask, object_gate_bypassed, prompt, track
from sam2pal.errors import SamPalError
from sam2pal.model.build import LoadedModel, fingerprint
from sam2pal.model.synthetic import VARIANT, build_small, save_checkpoint, small_config
from sam2pal.synthetic.domains import domain_rng, sample_collection


@dataclass
class PretrainConfig:
    steps: int = 2600
    image_size: int = 256
    pairs_per_step: int = 4
    lr: float = 6e-4
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    multi_template: float = 0.25  # share of pairs with two templates as memory
    absent: float = 0.05  # chance that a structure is missing on the specimen
    point_weight: float = 0.5
    save_every: int = 200

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SamPalError(f"--steps {self.steps} must be at least 1")
        if self.image_size % 32 or self.image_size < 64:
            raise SamPalError(f"--image-size {self.image_size} must be a multiple of 32 and at least 64")


@dataclass
class Example:
    """One template(s) → specimen pair at the model's input size."""

    templates: list[torch.Tensor]  # each (3, S, S) normalised
    template_masks: list[torch.Tensor]  # each (K, 1, S, S)
    specimen: torch.Tensor
    target: torch.Tensor  # (K, 1, S, S)
    coords: torch.Tensor  # (K, P, 2) clicks on the specimen, model pixels
    labels: torch.Tensor  # (K, P)


def _clicks(target: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` clicks per structure: the first inside, then inside or just outside at random."""
    coords = np.zeros((len(target), count, 2), dtype=np.float32)
    labels = np.ones((len(target), count), dtype=np.int32)
    for k, mask in enumerate(target):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            ys, xs = np.array([mask.shape[0] // 2]), np.array([mask.shape[1] // 2])
        for p in range(count):
            inside = p == 0 or rng.uniform() < 0.5
            if not inside:
                pad = max(4, int(0.15 * max(np.ptp(xs), np.ptp(ys))))
                x = int(rng.integers(max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)))
                y = int(rng.integers(max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)))
                if not mask[y, x]:
                    coords[k, p], labels[k, p] = (x, y), 0
                    continue
            i = int(rng.integers(len(xs)))
            coords[k, p] = (xs[i], ys[i])
    return coords, labels


def sample_examples(config: PretrainConfig, step: int) -> list[Example]:
    """The pairs of `step`: a function of (seed, step) alone."""
    rng = domain_rng("in-domain", "pretrain", config.seed, step)
    clicks = int(rng.choice([1, 2, 3], p=[0.5, 0.25, 0.25]))
    size = config.image_size
    examples = []
    for _ in range(config.pairs_per_step):
        collection = sample_collection("in-domain", rng)
        names = collection.species.structures
        count = 2 if rng.uniform() < config.multi_template else 1
        drawn = [collection.draw(rng) for _ in range(count)]
        image, masks = collection.draw(rng, config.absent)
        target = resize_masks(np.stack([masks[n] for n in names]), size)
        coords, labels = _clicks(target[:, 0].numpy() > 0, clicks, rng)
        examples.append(Example(
            templates=[preprocess(t, size) for t, _ in drawn],
            template_masks=[resize_masks(np.stack([m[n] for n in names]), size) for _, m in drawn],
            specimen=preprocess(image, size), target=target,
            coords=torch.from_numpy(coords), labels=torch.from_numpy(labels),
        ))
    return examples


def _rows(frame: Frame, images: list[int], repeats: list[int]) -> Frame:
    """Image `images[i]` of the batch `repeats[i]` times, in order: one row per object."""
    index = torch.tensor([image for image, times in zip(images, repeats) for _ in range(times)])
    return Frame([level.index_select(0, index) for level in frame.levels])


def point_loss(output, target: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """SAM's recipe for ambiguous clicks: only the best of the candidates is trained on the mask,
    every candidate's IoU estimate is trained, and the object score says "present"."""
    logits = output.multimask_logits.float()
    rows, candidates = logits.shape[:2]
    flat = logits.reshape(rows * candidates, 1, *logits.shape[-2:])
    truth = target.expand(-1, candidates, -1, -1).reshape(flat.shape)
    per = mask_loss(flat, truth, weights).view(rows, candidates)
    iou_term = ((output.ious.float() - hard_iou(flat, truth).view(rows, candidates)) ** 2).mean(1)
    score = F.binary_cross_entropy_with_logits(output.object_score_logits.float()[:, 0], torch.ones(rows), reduction="none")
    return (per.min(1).values + weights.iou * iou_term + weights.score * score).sum()


class Pretrainer:
    def __init__(self, config: PretrainConfig, out: Path, progress: Callable[[dict], None] | None = None):
        self.config = config
        self.out = Path(out)
        self.state_path = self.out.with_suffix(".state.pt")
        self.progress = progress or (lambda event: None)
        torch.manual_seed(config.seed)
        self.model_config = small_config(config.image_size)
        sam = build_small(self.model_config, config.image_size)
        self.loaded = LoadedModel(sam, "synthetic (pretraining)", VARIANT, config.image_size, torch.device("cpu"),
                                  untrained=True, checkpoint_sha256=None, fingerprint="")
        self.encoder = Encoder(self.loaded)
        self.weights = LossWeights()
        self.optimizer = torch.optim.AdamW(sam.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine down to 5% of the peak."""
        if step < self.config.warmup:
            return (step + 1) / self.config.warmup
        done = min(1.0, (step - self.config.warmup) / max(1, self.config.steps - self.config.warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done))

    def resume(self) -> None:
        if not self.state_path.is_file():
            raise SamPalError(f"--resume: no {self.state_path}; start without --resume")
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if state["config"] != asdict(self.config):
            raise SamPalError(f"--resume: {self.state_path} was made with other settings ({state['config']}); "
                              "use the same flags or start again")
        self.loaded.sam.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])

    def _save_state(self) -> None:
        state = {"model": self.loaded.sam.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.step, "config": asdict(self.config)}
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.state_path)

    def train_step(self, examples: list[Example]) -> dict[str, float]:
        """Every pair's structures are rows of one batch (pairs with as many templates go through
        together: a row's memories are its own pair's templates), one backward per step."""
        sam = self.loaded.sam
        training_mode(sam)
        images = [t for e in examples for t in e.templates] + [e.specimen for e in examples]
        frame = self.encoder.encode(torch.stack(images))
        first = np.cumsum([0] + [len(e.templates) for e in examples]).tolist()
        specimen_of = [first[-1] + i for i in range(len(examples))]
        propagation, clicks, rows_seen = torch.zeros(()), torch.zeros(()), 0
        with object_gate_bypassed(sam):
            for count in sorted({len(e.templates) for e in examples}):
                group = [i for i, e in enumerate(examples) if len(e.templates) == count]
                sizes = [examples[i].target.shape[0] for i in group]
                memories = []
                for j in range(count):
                    rows = _rows(frame, [first[i] + j for i in group], sizes)
                    masks = torch.cat([examples[i].template_masks[j] for i in group])
                    memories.append(condition_on_mask(sam, self.encoder.flatten(rows), masks))
                specimens = self.encoder.flatten(_rows(frame, [specimen_of[i] for i in group], sizes))
                output = track(sam, specimens, memories)
                target = torch.cat([examples[i].target for i in group])
                loss, _ = supervised_loss(output.high_res_logits, output.iou, output.object_score_logits,
                                          target, self.weights)
                propagation = propagation + loss
                rows_seen += target.shape[0]
            present = [examples[i].target.flatten(1).amax(1) > 0 for i in range(len(examples))]
            counts = [int(p.sum()) for p in present]
            if sum(counts):  # clicks on every structure the specimens show
                clicked = prompt(sam, self.encoder.flatten(_rows(frame, specimen_of, counts)),
                                 torch.cat([e.coords[p] for e, p in zip(examples, present)]),
                                 torch.cat([e.labels[p] for e, p in zip(examples, present)]))
                truth = torch.cat([e.target[p] for e, p in zip(examples, present)])
                clicks = point_loss(clicked, truth, self.weights)
        propagation, clicks = propagation / rows_seen, clicks / max(1, sum(counts))
        total = propagation + self.config.point_weight * clicks
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"loss": float(total.detach()), "propagation": float(propagation.detach()),
                "clicks": float(clicks.detach())}

    def run(self, minutes: float | None = None, command: str = "") -> bool:
        """Train to `config.steps`, or until `minutes` pass; either way the fp16 checkpoint of the
        weights so far is written (its metadata says how many steps it had) and the state is
        saved, so `resume` goes on. True when all steps are done."""
        deadline = None if minutes is None else time.monotonic() + 60 * minutes
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(sample_examples, self.config, self.step)
            while self.step < self.config.steps:
                examples = ahead.result()
                if self.step + 1 < self.config.steps:
                    ahead = pool.submit(sample_examples, self.config, self.step + 1)
                losses = self.train_step(examples)
                self.progress({"type": "step", "step": self.step, "total": self.config.steps,
                               "lr": self.scheduler.get_last_lr()[0], **losses})
                if self.step % self.config.save_every == 0:
                    self._save_state()
                if deadline is not None and time.monotonic() > deadline:
                    break
        self._save_state()
        provenance = {"image_size": str(self.config.image_size), "seed": str(self.config.seed),
                      "steps": str(self.config.steps), "steps_done": str(self.step), "command": command,
                      "pretrain_config": str(asdict(self.config)),
                      "seconds_last_session": f"{time.perf_counter() - started:.0f}"}
        self.loaded.sam.eval()
        save_checkpoint(self.loaded.sam, self.out, self.model_config, provenance)
        self.progress({"type": "done", "path": str(self.out), "steps_done": self.step,
                       "fingerprint": fingerprint(self.loaded.sam)})
        return self.step >= self.config.steps
