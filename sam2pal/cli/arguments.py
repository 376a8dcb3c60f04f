"""The command line's arguments: one parser for `sam2pal check | train | predict | run | evaluate |
pretrain | bench | serve | adapters`, with the flag groups the commands share."""

from __future__ import annotations

import argparse
from pathlib import Path

from sam2pal.io.images import DEFAULT_MAX_PIXELS

DESCRIPTION = ("`sam2pal check | train | predict | run | evaluate | pretrain | bench | serve`: "
               "the library from a shell.")

def _mask_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--mask {text!r}: write it as NAME=PATH, e.g. --mask eye=eye.png")
    return name, path


def _names(flag: str, legacy: str | None, use_legacy: bool) -> list[str]:
    """A sam2pal flag, plus the SAM2-PAL script's spelling of it where `run` accepts that too."""
    return [flag, legacy] if use_legacy and legacy else [flag]


def _model_args(parser: argparse.ArgumentParser, legacy: bool = False) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(*_names("--model", "--sam2_checkpoint", legacy), dest="model", default=None, help="tiny|small|base-plus|large (SAM2.1), sam2-tiny…, a Hub id, "
                       "a checkpoint path, random:tiny (untrained, for tests) or synthetic:256 (trained here on synthetic "
                       "specimens only). Default facebook/sam2.1-hiera-tiny")
    group.add_argument("--image-size", type=int, default=None,
                       help="model input size, a multiple of 32 (default 1024; a synthetic model: its own, 256)")
    group.add_argument("--device", default="auto", help="auto|cpu|cuda|mps (auto: cuda > mps > cpu)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the image encoder: slow first batch, then faster where it pays "
                            "(check with `sam2pal bench --compile`)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def _template_args(parser: argparse.ArgumentParser, legacy: bool = False) -> None:
    group = parser.add_argument_group("templates")
    group.add_argument(*_names("--templates", "--template_json", legacy), dest="templates", type=Path,
                       help="COCO file of the annotated template image(s)")
    group.add_argument("--template-images", type=Path, help="folder of the template images (default: next to the JSON)")
    group.add_argument(*_names("--template-image", "--template_image", legacy), dest="template_image", type=Path,
                       help="one template image, with --mask NAME=PATH per structure")
    group.add_argument("--mask", type=_mask_arg, action="append", default=[], metavar="NAME=PATH",
                       help="a structure's mask PNG for --template-image (repeat per structure)")


def _image_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"largest image read, in pixels (default {DEFAULT_MAX_PIXELS:,}); larger ones are "
                        "refused, not resized. The model always sees a resized copy; masks come back at full size")


def _train_args(parser: argparse.ArgumentParser, legacy: bool = False) -> None:
    group = parser.add_argument_group("fine-tuning")
    group.add_argument(*_names("--epochs", "--num_epochs", legacy), dest="epochs", type=int, default=5)
    group.add_argument("--steps-per-epoch", type=int, default=None,
                       help="default: one pass over the specimens (specimens ÷ (--accumulate × processes) steps)")
    group.add_argument("--mode", choices=("lora", "decoder", "full"), default="lora")
    group.add_argument(*_names("--lr", "--learning_rate", legacy), dest="lr", type=float, default=None, help="default 2e-4 (lora), 1e-5 (decoder), 5e-6 (full)")
    group.add_argument(*_names("--lora-rank", "--lora_rank", legacy), dest="lora_rank", type=int, default=8)
    group.add_argument("--lora-encoder", action="store_true", help="also put LoRA on the image encoder (no feature cache)")
    group.add_argument("--cycle-memory", choices=("tracked", "mask"), default="tracked",
                       help="how the phase-1 prediction becomes phase-2 memory (default tracked)")
    group.add_argument("--structures-per-pass", type=int, metavar="N",
                       help="structures per forward/backward pass; fewer = less memory, same result "
                            "(default: all on a GPU; on CPU as many as fit ~1 GB: all at 256 px, 3 at 512, 1 at 1024; "
                            "always all when the encoder trains)")
    group.add_argument("--accumulate", type=int, default=1, metavar="N",
                       help="palindromes per optimiser step (per process), gradients accumulated: the same update "
                            "as one batch of N")
    group.add_argument("--init-adapter", type=Path, metavar="DIR",
                       help="start from an earlier adapter of the same base model (its mode and rank), e.g. a "
                            "second round with more templates; epoch 0 then validates that adapter")
    group.add_argument("--warmup-steps", type=int, default=None, metavar="N",
                       help="linear learning-rate warm-up before the cosine decay (default 5%% of the steps)")
    group.add_argument("--precision", choices=("bf16", "fp16"), default="bf16",
                       help="autocast on CUDA (CPU runs full precision): bf16 (default), or fp16 with a gradient "
                            "scaler for GPUs without bf16 (V100, T4)")
    group.add_argument("--tensorboard", type=Path, metavar="DIR",
                       help="also write loss, learning rate and per-structure validation IoU for TensorBoard "
                            "(pip install 'sam2pal[tensorboard]')")
    group.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train on N local processes (GPUs) under torchrun; same as `torchrun --nproc_per_node N "
                            "-m sam2pal.cli train …`: each samples its own palindromes, gradients are averaged, "
                            "process 0 validates and writes")
    group.add_argument("--low-memory", action="store_true",
                       help="lowest peak RAM: one structure per pass and freed memory returned to the "
                            "system at once (15-30%% slower steps on CPU)")
    group.add_argument("--feature-cache-gb", type=float, default=2.0, metavar="GB",
                       help="RAM for cached image features (default 2; 1024 px needs ~17 MB per image)")
    group.add_argument("--feature-cache-dir", type=Path, metavar="DIR",
                       help="put features that do not fit in RAM in a temporary folder inside DIR "
                            "instead of encoding them again")
    group.add_argument("--folds", type=int, default=5, help="validation: templates are dealt into this many folds "
                       "(at most one per template) and one is held out, never trained on (default 5: about "
                       "one in five)")
    group.add_argument("--fold", type=int, default=0, help="which fold is held out (0 … --folds − 1); run each "
                       "fold for k-fold validation")
    group.add_argument("--no-augment", action="store_true", help="do not move x1 relative to x0 (not recommended)")
    group.add_argument("--seed", type=int, default=0)


def _overlay_size(text: str) -> int | None:
    if text == "full":
        return None
    if not text.isdigit() or int(text) < 64:
        raise argparse.ArgumentTypeError(f"--overlay-size {text!r}: give full or a long side of at least 64 pixels")
    return int(text)


def _predict_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prediction")
    group.add_argument("--batch-size", type=int, default=4, help="specimens per encoder batch")
    group.add_argument("--polygons", action="store_true", help="COCO polygons instead of compressed RLE, for tools "
                       "that only read polygons (every part kept; holes cannot be polygons and are filled)")
    group.add_argument("--zip", action="store_true", help="also bundle predictions.json, masks, overlays and "
                       "report.json into OUT/results.zip")
    group.add_argument("--overwrite", action="store_true", help="replace results already in OUT (default: "
                       "keep them and segment only the images not done yet)")
    group.add_argument("--masks", choices=("png", "none"), default="png", help="png: a 1-bit PNG per structure "
                       "and photo in OUT/masks (default); none: only the COCO file, when that is all you need")
    group.add_argument("--overlay-size", type=_overlay_size, default=2048, metavar="full|N",
                       help="long side of the overlays in pixels (default 2048, review size), or full; photos are "
                       "decoded at this size when it is larger than the model's input")
    group.add_argument("--no-qc", action="store_true", help="skip the round-trip quality check (faster)")
    group.add_argument("--qc-min-iou", type=float, default=0.5, help="flag structures whose round-trip IoU is below")
    group.add_argument("--qc-min-confidence", type=float, default=0.5, help="flag masks less confident than this")
    group.add_argument("--qc-area-range", type=float, nargs=2, default=(0.33, 3.0), metavar=("LOW", "HIGH"),
                       help="flag masks whose area ratio to the template's is outside this range")
    cluster = parser.add_argument_group("on a Ray cluster (pip install 'sam2pal[ray]')")
    cluster.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                         help="stream the images through Ray Data actors: without ADDRESS a local Ray is started "
                              "here; with one (auto, ray://host:10001) that cluster is used (OUT must be on storage "
                              "every node sees)")
    cluster.add_argument("--ray-workers", type=int, default=1, help="actors, each with the model loaded once (default 1)")
    cluster.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor; fractions share a GPU")
    cluster.add_argument("--cpus-per-worker", type=float, default=None,
                         help="CPUs per actor (default: this machine's CPUs shared out with a local Ray, else 1)")
    group.add_argument("--orientation-search", choices=("none", "rot4", "rot4flip"), default="none",
                       help="try each specimen turned (and mirrored), keep the turn with the best QC score")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam2pal", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="check templates and an image folder before training or predicting")
    _template_args(check)
    check.add_argument("--images", type=Path, help="folder of specimen images to check")
    _image_args(check)

    predict = commands.add_parser("predict", help="propagate the template structures to a folder of specimens")
    _template_args(predict)
    predict.add_argument("--images", type=Path, required=True, help="folder of specimen images")
    _image_args(predict)
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--adapter", type=Path, help="adapter folder from `sam2pal train`")
    predict.add_argument("--adapters", type=Path, metavar="LIBRARY", help="an adapter library (`sam2pal adapters "
                         "add`): each specimen is segmented by the adapter its photo looks closest to; report.json "
                         "records which and the selector's confidence")
    predict.add_argument("--min-confidence", type=float, default=0.5, help="with --adapters: below this "
                         "confidence the base model segments the specimen and it is flagged (default 0.5)")
    _predict_args(predict)
    _model_args(predict)

    train = commands.add_parser("train", help="palindrome fine-tuning on templates plus unlabeled specimens")
    _template_args(train)
    train.add_argument("--images", type=Path, required=True, help="folder of unlabeled specimen images")
    _image_args(train)
    train.add_argument("--out", type=Path, required=True, help="adapter folder to write")
    train.add_argument("--resume", type=Path, help="continue an adapter folder written by train")
    labelled = train.add_argument_group("supervised fine-tuning")
    labelled.add_argument("--labels", type=Path, metavar="GT.json",
                          help="COCO of labelled specimens (review corrections, another tool's ground truth), their "
                               "images found in --images by file name: the templates' memory predicts each one, "
                               "loss against its labels; about one in five (at least one) is held out as the test "
                               "part that validation scores (IoU, Dice, pixel accuracy, boundary F1)")
    labelled.add_argument("--supervised-only", action="store_true",
                          help="with --labels: no palindrome steps on the unlabelled specimens")
    labelled.add_argument("--loss-weights", default="", metavar="TERM=W,…",
                          help="weights of the supervised loss (default dice=1,bce=1,focal=0,iou=1,score=1; iou: "
                               "the IoU head, score: the object score; Meta's SAM2 recipe is focal=20,bce=0)")
    _train_args(train)
    _model_args(train)

    run = commands.add_parser("run", help="optional fine-tuning, then prediction (also takes SAM2-PAL's flags)")
    _template_args(run, legacy=True)
    run.add_argument("--images", "--image_dir", dest="images", type=Path, required=True)
    run.add_argument("--out", "--output_dir", dest="out", type=Path, required=True)
    _image_args(run)
    run.add_argument("--finetune", "--pal_finetuning", dest="finetune", action="store_true",
                     help="fine-tune first (adapter written to OUT/adapter)")
    _train_args(run, legacy=True)
    _predict_args(run)
    _model_args(run, legacy=True)
    legacy = run.add_argument_group("more SAM2-PAL script flags (same meaning)")
    legacy.add_argument("--template_mask", type=Path, help="a binary mask PNG for --template_image")
    legacy.add_argument("--category_name", default="object", help="the structure name of --template_mask")
    legacy.add_argument("--training_json", type=Path, help="more annotated templates for fine-tuning")
    legacy.add_argument("--training_images_dir", type=Path, help="folder of the --training_json images")
    legacy.add_argument("--use_lora", action="store_true", help="LoRA fine-tuning (sam2pal's default mode)")
    legacy.add_argument("--sam2_config", help="accepted; the config is inferred from the checkpoint")
    for flag in ("--interleave_template", "--cycle_consistency", "--save_vis"):
        legacy.add_argument(flag, action="store_true", help="accepted; sam2pal always does the equivalent")
    legacy.add_argument("--chunk_size", type=int, help="accepted; see --batch-size")

    evaluate = commands.add_parser("evaluate", help="IoU, Dice and boundary F1 of predictions against ground truth")
    evaluate.add_argument("--gt", type=Path, required=True, help="COCO file of the ground truth")
    evaluate.add_argument("--pred", type=Path, required=True, help="COCO file of the predictions (predictions.json)")
    evaluate.add_argument("--boundary-tol", type=float, default=2.0, metavar="PX",
                          help="boundary F1 counts a boundary pixel as matched within this many pixels (default 2)")
    evaluate.add_argument("--out", type=Path, help="write metrics.csv, metrics.json and metrics.png here")

    adapters = commands.add_parser("adapters", help="an adapter library: one adapter per collection, picked per "
                                   "photo by `predict --adapters`")
    library_commands = adapters.add_subparsers(dest="action", required=True)
    add = library_commands.add_parser("add", help="copy an adapter into the library with reference embeddings of "
                                      "its collection's photos (for the selector)")
    add.add_argument("name", help="the adapter's name in the library (letters, digits, . _ -)")
    add.add_argument("adapter_dir", type=Path, help="adapter folder from `sam2pal train`")
    add.add_argument("--images", type=Path, required=True, help="photos of the collection it was trained for "
                     "(up to --references of them are embedded)")
    add.add_argument("--references", type=int, default=32, help="photos embedded for the selector (default 32)")
    for command in (add, library_commands.add_parser("list", help="the library's adapters"),
                    library_commands.add_parser("remove", help="take an adapter out of the library")):
        command.add_argument("--library", type=Path, required=True, help="the library folder")
    library_commands.choices["remove"].add_argument("name")
    add.add_argument("--model", help="the adapter's base model (default: the one its config names)")
    add.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")

    commands.add_parser("serve", add_help=False, help="start the web app (the flags of app.py; "
                        "`sam2pal serve --help` lists them)")

    pretrain = commands.add_parser("pretrain", help="train the small synthetic SAM2 from random weights on "
                                   "synthetic specimens (what --model synthetic:256 loads)")
    pretrain.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors, fp16)")
    pretrain.add_argument("--steps", type=int, default=2600, help="optimiser steps (default 2600)")
    pretrain.add_argument("--image-size", type=int, default=256, help="model input size (default 256)")
    pretrain.add_argument("--pairs-per-step", type=int, default=2, help="template → specimen pairs per step")
    pretrain.add_argument("--lr", type=float, default=6e-4, help="peak learning rate (warm-up, then cosine)")
    pretrain.add_argument("--seed", type=int, default=0, help="seeds the weights and every synthetic draw")
    pretrain.add_argument("--minutes", type=float, help="stop after this long, state saved; --resume goes on")
    pretrain.add_argument("--resume", action="store_true", help="continue from OUT's .state.pt")
    pretrain.add_argument("--quiet", action="store_true", help="no progress bar")

    bench = commands.add_parser("bench", help="print training and prediction speed on this machine, or with "
                                "--quality how well a model segments synthetic collections it never saw")
    bench.add_argument("--model", default=None, help="model to measure (default random:tiny for speed, "
                       "synthetic:256 for --quality)")
    bench.add_argument("--image-size", type=int, nargs="+", default=None,
                       help="model input sizes, each timed in its own process (default 256 512; --quality: "
                            "the first, default the model's own)")
    bench.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    bench.add_argument("--specimens", type=int, default=8, help="specimens for the predict timing, or per "
                       "collection with --quality")
    bench.add_argument("--steps", type=int, default=4, help="training steps per timing (--labels: per epoch)")
    bench.add_argument("--compile", action="store_true", help="also time prediction with --compile")
    bench.add_argument("--scale", type=int, nargs="+", metavar="N",
                       help="instead: peak RSS of `predict` runs on N specimens each (e.g. --scale 50 500), "
                            "at the first --image-size")
    bench.add_argument("--io", action="store_true", help="instead: seconds per specimen of every stage (decode, "
                       "model, upsample, RLE, PNG, overlay, QC, COCO check) and peak RSS on 0.3-45 MP photos "
                       "(default model synthetic:256)")
    bench.add_argument("--megapixels", type=float, nargs="+", default=[0.3, 12, 24, 45],
                       help="--io: photo sizes (default 0.3 12 24 45)")
    bench.add_argument("--batch-size", type=int, nargs="+", default=[4, 1, 8],
                       help="--io: batch of the end-to-end run, then batches whose peak RSS is compared (default 4 1 8)")
    bench.add_argument("--ray", action="store_true", help="instead: per-image cost of predict --ray against plain "
                       "predict (--specimens images, default model synthetic:256), and the driver's peak RSS on "
                       "--ray-counts images")
    bench.add_argument("--ray-counts", type=int, nargs="+", default=[500, 5000], help="--ray: collection sizes "
                       "whose driver RSS is compared (default 500 5000)")
    bench.add_argument("--ray-workers", type=int, default=1, help="--ray: actors (default 1)")
    quality = bench.add_argument_group("--quality (synthetic collections from evaluation seeds)")
    quality.add_argument("--quality", action="store_true", help="instead: segmentation quality table "
                         "(zero-shot, orientation search, quality check, fine-tuning under a domain shift)")
    quality.add_argument("--collections", type=int, default=12, help="in-domain collections (default 12)")
    quality.add_argument("--finetune-seeds", type=int, default=2,
                         help="collections per shifted domain for the fine-tuning rows (0 skips them; default 2)")
    quality.add_argument("--finetune-epochs", type=int, default=4, help="epochs of each fine-tune (default 4)")
    quality.add_argument("--out", type=Path, help="also write quality.json and quality.md here (--labels: "
                         "labels.json, labels.md and, with matplotlib, labels.png)")
    quality.add_argument("--labels", action="store_true", help="instead: label-efficiency curve, held-out IoU after "
                         "supervised fine-tuning on 0-20 labelled specimens beside palindrome fine-tuning, on "
                         "shifted domains (--finetune-seeds collections each, --finetune-epochs × --steps steps)")
    quality.add_argument("--library", action="store_true", help="instead: an adapter library over --finetune-seeds "
                         "collections of each of three synthetic domains: selector accuracy, and IoU with the "
                         "library, with one adapter fine-tuned on every collection in turn, and with the base model")
    return parser
