"""The three SAM2 operations everything else is made of, on Meta's `SAM2Base` directly.

- `condition_on_mask`: a frame with a given mask becomes a conditioning memory (the template).
- `track`: a frame is segmented from memories (a specimen, or the template on the way back).
- `condition_on_prediction`: a tracked frame's own soft prediction becomes a memory.

They mirror what `SAM2VideoPredictor` does for a two-frame video, without its
`inference_mode` and per-object loops, so the same code serves inference and training: objects
(structures, and specimens × structures) are the batch dimension.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from sam2pal.engine.frames import Flat

Memory = dict[str, object]  # one conditioning frame: maskmem_features, maskmem_pos_enc, obj_ptr


@dataclass
class TrackOutput:
    low_res_logits: torch.Tensor  # (N, 1, S/4, S/4)
    high_res_logits: torch.Tensor  # (N, 1, S, S)
    obj_ptr: torch.Tensor  # (N, C)
    object_score_logits: torch.Tensor  # (N, 1)
    iou: torch.Tensor  # (N,) the decoder's own estimate for the mask it chose


@contextmanager
def object_gate_bypassed(sam: torch.nn.Module) -> Iterator[None]:
    """While training, the hard object-score gate (logits -> -1024) would cut every gradient.

    With the SAM2.1 configs the object pointer then follows the "present" branch exactly; the
    object score itself is still computed and is supervised by the loss, so the stock gate can
    stay on at inference.
    """
    saved = sam.pred_obj_scores
    sam.pred_obj_scores = False
    try:
        yield
    finally:
        sam.pred_obj_scores = saved


def condition_on_mask(sam: torch.nn.Module, frame: Flat, masks: torch.Tensor, frame_idx: int = 0) -> Memory:
    """Encode `frame` with `masks` (N, 1, S, S) in [0, 1] as a conditioning memory.

    As in the video predictor: the mask is used as the output (no decoder), its low-res logits
    are upsampled and encoded — binarised in eval mode, soft while training.
    """
    _, outputs, _, _ = sam._track_step(
        frame_idx, True, frame.feats, frame.pos, frame.sizes, None, masks, {}, 1, False, None
    )
    low_res, obj_ptr, score = outputs[3], outputs[5], outputs[6]
    high_res = F.interpolate(low_res, size=(sam.image_size, sam.image_size), mode="bilinear", align_corners=False)
    features, pos = sam._encode_new_memory(frame.feats, frame.sizes, high_res, score, is_mask_from_pts=True)
    if not sam.training:
        features = features.to(torch.bfloat16)  # the video predictor stores memories in bf16
    return {"maskmem_features": features, "maskmem_pos_enc": pos, "obj_ptr": obj_ptr}


def condition_on_prediction(sam: torch.nn.Module, frame: Flat, prediction: TrackOutput) -> Memory:
    """A tracked frame's soft prediction as a memory, the way SAM2 stores tracked frames.

    In train mode the logits go through one sigmoid into the memory encoder, so gradients reach
    the prediction that produced them; the object pointer is the prediction's own.
    """
    features, pos = sam._encode_new_memory(
        frame.feats, frame.sizes, prediction.high_res_logits, prediction.object_score_logits, is_mask_from_pts=False
    )
    return {"maskmem_features": features, "maskmem_pos_enc": pos, "obj_ptr": prediction.obj_ptr}


def repeat_memory(memory: Memory, times: int) -> Memory:
    """The same K-object memory for `times` images: rows ordered image-major, object-minor."""
    if times == 1:
        return memory
    return {
        "maskmem_features": memory["maskmem_features"].repeat(times, 1, 1, 1),
        "maskmem_pos_enc": [p.repeat(times, 1, 1, 1) for p in memory["maskmem_pos_enc"]],
        "obj_ptr": memory["obj_ptr"].repeat(times, 1),
    }


def select_rows(memory: Memory, rows: torch.Tensor) -> Memory:
    """The memory of some of its objects only (rows in its batch)."""
    return {
        "maskmem_features": memory["maskmem_features"].index_select(0, rows),
        "maskmem_pos_enc": [p.index_select(0, rows) for p in memory["maskmem_pos_enc"]],
        "obj_ptr": memory["obj_ptr"].index_select(0, rows),
    }


@contextmanager
def first_self_attention_per_image(sam: torch.nn.Module, rows_per_image: int) -> Iterator[None]:
    """Memory attention's first layer attends over the image alone (memories enter at its
    cross-attention), so rows that show the same image get the same result: compute it once
    per image. Rows must come in runs of `rows_per_image` equal images (image-major).

    With K structures per image this removes K-1 of every K first-layer self-attentions, in
    training (forward and backward) and prediction alike.
    """
    attention = sam.memory_attention
    if rows_per_image == 1 or not attention.batch_first:
        yield
        return
    layer = attention.layers[0]
    per_row = layer._forward_sa

    def per_image(tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        shared = per_row(tgt[::rows_per_image], query_pos[::rows_per_image])
        return shared.repeat_interleave(rows_per_image, dim=0)

    layer._forward_sa = per_image
    try:
        yield
    finally:
        del layer._forward_sa


@dataclass
class PromptOutput:
    multimask_logits: torch.Tensor  # (N, M, S, S): M = 3 candidates for one click, else 1
    ious: torch.Tensor  # (N, M) the decoder's estimate for each candidate
    best_low_res: torch.Tensor  # (N, 1, S/4, S/4) the candidate with the best estimate
    object_score_logits: torch.Tensor  # (N, 1)


def prompt(sam: torch.nn.Module, frame: Flat, coords: torch.Tensor, labels: torch.Tensor) -> PromptOutput:
    """Segment from clicks alone, as on the first clicked frame of a video: no memory.

    `coords` (N, P, 2) in model-input pixels (x, y), `labels` (N, P): 1 inside, 0 outside."""
    points = {"point_coords": coords, "point_labels": labels}
    _, outputs, _, _ = sam._track_step(0, True, frame.feats, frame.pos, frame.sizes, points, None, {}, 1, False, None)
    return PromptOutput(outputs[1], outputs[2], outputs[3], outputs[6])


def track(sam: torch.nn.Module, frame: Flat, memories: list[Memory]) -> TrackOutput:
    """Segment `frame` from conditioning memories placed at frames 0..M-1; it is frame M of M+1.

    Training and inference use the same frame indices, so the temporal encodings the model
    learns with are the ones it meets at inference. Work that depends on the image alone runs
    once per image where the frame's rows repeat images (`Flat.rows_per_image`).
    """
    frame_idx = len(memories)
    output_dict = {"cond_frame_outputs": dict(enumerate(memories)), "non_cond_frame_outputs": {}}
    with first_self_attention_per_image(sam, frame.rows_per_image):
        _, outputs, _, _ = sam._track_step(
            frame_idx, False, frame.feats, frame.pos, frame.sizes, None, None, output_dict, frame_idx + 1, False, None
        )
    _, _, ious, low_res, high_res, obj_ptr, score = outputs
    if ious.shape[1] > 1:
        best = torch.argmax(ious, dim=-1)
        iou = ious.gather(1, best[:, None])[:, 0]
    else:
        iou = ious[:, 0]
    return TrackOutput(low_res, high_res, obj_ptr, score, iou)
