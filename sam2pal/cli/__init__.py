"""`sam2pal check | train | predict | run | evaluate | pretrain | bench | serve`: the library from a shell.

Exit status: 0 when every specimen succeeded, 1 when some failed (the rest is written and the
failures are in report.json), 2 for invalid arguments or input a user must fix first.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from sam2pal.cli.arguments import build_parser
from sam2pal.errors import SamPalError

EXIT_OK, EXIT_SOME_FAILED, EXIT_INVALID = 0, 1, 2


def _templates(args: argparse.Namespace):
    from sam2pal.api import load_templates, merge_templates

    masks = dict(args.mask)
    image = args.template_image
    coco = args.templates
    if coco is not None and image is not None and args.template_images is None:
        args.template_images = image.parent  # SAM2-PAL pairs the JSON with the image's folder
        image = None
    if getattr(args, "template_mask", None) is not None:
        masks[args.category_name] = args.template_mask
    templates = load_templates(coco, args.template_images, image, masks, args.max_pixels)
    _warn(templates.warnings)
    if getattr(args, "training_json", None) is not None:
        extra = load_templates(args.training_json, args.training_images_dir, max_pixels=args.max_pixels)
        _warn(extra.warnings)
        templates = merge_templates(templates, extra)
    return templates


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _load_model(args: argparse.Namespace):
    from sam2pal.model.build import DEFAULT_MODEL, compile_model, describe, load_model

    from sam2pal.cluster.ddp import rank_device

    model = load_model(args.model or DEFAULT_MODEL, args.image_size, rank_device(args.device))
    if args.compile:
        compile_model(model)
    if not args.quiet:
        print(f"model: {describe(model)}", file=sys.stderr)
    return model


def _train_config(args: argparse.Namespace):
    from sam2pal.engine.trainer import TrainConfig

    same_names = ("epochs", "steps_per_epoch", "mode", "lr", "lora_rank", "lora_encoder", "cycle_memory",
                  "structures_per_pass", "low_memory", "max_pixels", "seed", "folds", "fold", "accumulate",
                  "init_adapter", "warmup_steps", "tensorboard", "precision")  # flags named as TrainConfig's fields
    from sam2pal.engine.losses import LossWeights

    return TrainConfig(**{name: getattr(args, name) for name in same_names},
                       cache_bytes=int(args.feature_cache_gb * 2**30), cache_dir=args.feature_cache_dir,
                       augment=not args.no_augment, supervised_only=getattr(args, "supervised_only", False),
                       loss=LossWeights.parse(getattr(args, "loss_weights", "")))


def _train(args: argparse.Namespace, model, templates, out: Path, resume: Path | None = None):
    from sam2pal.api import finetune
    from sam2pal.io.images import list_images

    config = _train_config(args)
    bar = None if args.quiet else tqdm(desc="fine-tuning", unit="step", file=sys.stderr)

    def progress(event: dict) -> None:
        if event["type"] == "step" and bar is not None:
            bar.total = event["total_steps"]
            bar.update(1)
            bar.set_postfix(loss=f"{event['loss']:.3f}")
        elif event["type"] == "epoch" and event.get("mean_iou") is not None and not args.quiet:
            tqdm.write(f"epoch {event['epoch']}: validation IoU {event['mean_iou']:.3f}"
                       + (" (kept)" if event["kept"] else ""), file=sys.stderr)
        elif event["type"] == "warning":
            tqdm.write(f"warning: {event['message']}", file=sys.stderr)

    labels = None
    if getattr(args, "labels", None) is not None:
        from sam2pal.io.labels import load_labels

        labels = load_labels(args.labels, args.images, templates.structures, args.max_pixels)
        for warning in labels.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    elif getattr(args, "supervised_only", False):
        raise SamPalError("--supervised-only needs labelled specimens: pass --labels GT.json")
    if len(templates.templates) < 2 and (labels is None or len(labels.templates) < 2) and not args.quiet:
        print("one template: nothing to validate on, so the last epoch is kept "
              "(annotate a second template, or pass two or more --labels, to let validation choose)", file=sys.stderr)
    result = finetune(model, templates, list_images(args.images), out, config, resume, progress, labels=labels)
    if bar is not None:
        bar.close()
    if result.validated and result.validation and not args.quiet:  # rank 0's (the others do not validate)
        zero = result.validation[0]["mean_iou"]
        best = result.validation[result.best_epoch]["mean_iou"]
        print(f"kept epoch {result.best_epoch}: validation IoU {best:.3f} (zero-shot {zero:.3f})", file=sys.stderr)
    return result


def _adapters(args: argparse.Namespace) -> int:
    from sam2pal.model.library import AdapterLibrary

    library = AdapterLibrary(args.library)
    if args.action == "add":
        import numpy as np

        from sam2pal.engine.frames import Encoder
        from sam2pal.engine.selector import embed
        from sam2pal.io.images import list_images, load_photo
        from sam2pal.model.adapters import check_base, read_adapter_config
        from sam2pal.model.build import load_model

        config = read_adapter_config(args.adapter_dir)
        if args.references < 1:
            raise SamPalError(f"--references {args.references} must be at least 1")
        model = load_model(args.model or config.base_model, config.image_size, args.device)
        check_base(model, config, args.adapter_dir)
        photos = list_images(args.images)[: args.references]
        encoder = Encoder(model)
        images = [load_photo(path, model.image_size, model.image_size).image for path in photos]
        references = np.concatenate([embed(encoder, images[i : i + 8]) for i in range(0, len(images), 8)])
        entry = library.add(args.name, args.adapter_dir, references, [p.name for p in photos])
        print(f"added {entry.name} to {library.folder}: {entry.size_bytes / 2**20:.2f} MB, {entry.references} "
              f"reference photos, base {entry.base_model}")
    elif args.action == "remove":
        library.remove(args.name)
        print(f"removed {args.name} from {library.folder}")
    else:
        entries = library.entries()
        print(f"{library.folder}: {len(entries)} adapter(s)")
        for e in entries:
            trained = e.trained_on.get("templates") or []
            print(f"{e.name}\t{e.size_bytes / 2**20:.2f} MB\t{e.added}\tbase {e.base_model}\t{e.references} "
                  f"references\t{len(trained)} template(s)\t{', '.join(e.structures)}")
    return EXIT_OK


def _predict(args: argparse.Namespace, model, templates, adapter: Path | None) -> int:
    from sam2pal.api import predict
    from sam2pal.io.records import OutputOptions

    bar = None if args.quiet else tqdm(desc="predicting", unit="image", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    from sam2pal.engine.qc import QCConfig

    options = OutputOptions(polygons=args.polygons, zip=args.zip, overwrite=args.overwrite, masks=args.masks,
                            overlay_size=args.overlay_size)
    qc = None if args.no_qc else QCConfig(args.qc_min_iou, args.qc_min_confidence, tuple(args.qc_area_range))
    ray = None
    if args.ray is not None:
        from sam2pal.cluster.ray_predict import RaySettings

        ray = RaySettings(None if args.ray == "local" else args.ray, args.ray_workers, args.gpus_per_worker,
                          args.cpus_per_worker)
    report = predict(model, templates, args.images, args.out, adapter, args.batch_size, args.max_pixels,
                     progress, options, qc, args.orientation_search, ray, getattr(args, "adapters", None),
                     getattr(args, "min_confidence", 0.5))
    if bar is not None:
        bar.close()
    for item in report["images"]:
        if item["status"] == "failed":
            print(f"failed: {item['error']}", file=sys.stderr)
        elif item["status"] == "skipped":
            print(f"note: skipped {item['file']}: {item['reason']}", file=sys.stderr)
    if not args.quiet:
        earlier = report["n_from_earlier_runs"]
        kept = f" ({earlier} kept from an earlier run)" if earlier else ""
        print(f"{report['n_ok']} images segmented{kept}, {report['n_failed']} failed, "
              f"{report['n_skipped']} files skipped; results in {args.out}", file=sys.stderr)
    return EXIT_SOME_FAILED if report["n_failed"] else EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from sam2pal.check import check_inputs

    bar = tqdm(desc="reading images", unit="image", file=sys.stderr, disable=None)  # a terminal only

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    report = check_inputs(args.templates, args.template_images, args.template_image, dict(args.mask) or None,
                          args.images, args.max_pixels, progress)
    bar.close()
    if report.templates:
        print(f"templates: {len(report.templates)}, structures: {', '.join(report.structures)}")
    for template in report.templates:
        parts = [f"{name} {area:,} px" for name, area in template.areas.items()]
        parts += [f"{name} absent" for name in template.absent]
        parts += [f"{name} not annotated" for name in template.not_annotated]
        print(f"  {template.name} ({template.width}x{template.height}): {', '.join(parts)}")
    if report.images_folder is not None:
        print(f"images in {report.images_folder}: {len(report.images)} readable, {len(report.unreadable)} "
              f"unreadable, {len(report.skipped)} other files skipped")
    for note in report.unreadable:
        print(f"  unreadable: {note.message}")
    for note in report.skipped:
        print(f"  skipped {note.file}: {note.message}")
    _warn(report.warnings)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    print("usable: yes" if report.usable else f"usable: no (problems: {len(report.problems)})")
    return EXIT_OK if report.usable else EXIT_INVALID


def _evaluate(args: argparse.Namespace) -> int:
    from sam2pal.evaluate import evaluate, summary_lines, write_evaluation

    evaluation = evaluate(args.gt, args.pred, args.boundary_tol)
    for note in evaluation.notes:
        print(f"note: {note}", file=sys.stderr)
    print("\n".join(summary_lines(evaluation)))
    if args.out is not None:
        written = write_evaluation(evaluation, args.out)
        for path in written:
            print(f"wrote {path}")
        if len(written) == 2:
            print("note: no metrics.png without matplotlib: pip install 'sam2pal[plots]'", file=sys.stderr)
    return EXIT_OK


def _pretrain(args: argparse.Namespace) -> int:
    from sam2pal.engine.pretrain import PretrainConfig, Pretrainer

    if args.out.suffix != ".safetensors":
        raise SamPalError(f"--out {args.out}: name the checkpoint NAME.safetensors")
    config = PretrainConfig(steps=args.steps, image_size=args.image_size, pairs_per_step=args.pairs_per_step,
                            lr=args.lr, seed=args.seed)
    bar = tqdm(desc="pretraining", unit="step", total=config.steps, file=sys.stderr, disable=args.quiet)

    def progress(event: dict) -> None:
        if event["type"] == "step":
            bar.n = event["step"]
            bar.set_postfix(loss=f"{event['loss']:.3f}", clicks=f"{event['clicks']:.3f}", refresh=False)
            bar.refresh()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    trainer = Pretrainer(config, args.out, progress)
    if args.resume:
        trainer.resume()
        bar.n = trainer.step
    command = " ".join(["sam2pal pretrain", f"--out {args.out.name}", f"--steps {config.steps}",
                        f"--image-size {config.image_size}", f"--pairs-per-step {config.pairs_per_step}",
                        f"--lr {config.lr:g}", f"--seed {config.seed}"]
                       + ([f"--minutes {args.minutes:g}"] if args.minutes is not None else []))
    finished = trainer.run(args.minutes, command)
    bar.close()
    from sam2pal.model.build import file_sha256

    done = "" if finished else f" after {trainer.step} of {config.steps} steps (--minutes)"
    print(f"wrote {args.out}{done} (sha256 {file_sha256(args.out)}), trained on synthetic specimens only",
          file=sys.stderr)
    if not finished:
        print("continue with the same command and --resume", file=sys.stderr)
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "pretrain":
        return _pretrain(args)
    if args.command == "bench":
        from sam2pal.bench import run_bench, run_scale

        if args.library:
            from sam2pal.bench_library import run_library

            run_library(args.model or "synthetic:256", args.image_size[0] if args.image_size else None, args.device,
                        args.finetune_seeds, args.finetune_epochs)
            return EXIT_OK
        if args.labels:
            from sam2pal.bench_labels import run_labels

            run_labels(args.model or "synthetic:256", args.image_size[0] if args.image_size else None, args.device,
                       args.finetune_seeds, args.finetune_epochs, args.steps, args.out)
            return EXIT_OK
        if args.quality:
            from sam2pal.bench_quality import run_quality

            if args.collections < 1 or args.specimens < 1 or args.finetune_seeds < 0 or args.finetune_epochs < 1:
                raise SamPalError("--collections, --specimens and --finetune-epochs must be at least 1, "
                                  "--finetune-seeds at least 0")
            size = args.image_size[0] if args.image_size else None
            run_quality(args.model or "synthetic:256", size, args.device, args.collections, args.specimens,
                        args.finetune_seeds, args.finetune_epochs, args.out)
            return EXIT_OK
        if args.ray:
            from sam2pal.bench_ray import run_ray_bench

            if args.specimens < 2 or min(args.ray_counts) < 2 or args.ray_workers < 1:
                raise SamPalError("--specimens and --ray-counts need at least 2 images, --ray-workers at least 1")
            run_ray_bench(args.model or "synthetic:256", args.image_size[0] if args.image_size else None,
                          args.specimens, args.ray_counts, args.batch_size[0], args.ray_workers)
            return EXIT_OK
        if args.io:
            from sam2pal.bench_io import run_io

            if args.specimens < 1 or min(args.batch_size) < 1 or min(args.megapixels) <= 0:
                raise SamPalError("--specimens and --batch-size must be at least 1, --megapixels above 0")
            run_io(args.model or "synthetic:256", args.image_size[0] if args.image_size else None, args.device,
                   args.specimens, args.megapixels, args.batch_size)
            return EXIT_OK
        args.model = args.model or "random:tiny"
        args.image_size = args.image_size or [256, 512]
        if args.scale:
            if min(args.scale) < 1:
                raise SamPalError(f"--scale {' '.join(map(str, args.scale))}: counts must be at least 1")
            if args.compile:
                raise SamPalError("--scale measures memory per collection size; run --compile without it")
            run_scale(args.model, args.image_size[0], args.device, args.scale)
            return EXIT_OK

        run_bench(args.model, args.image_size, args.device, args.specimens, args.steps, args.compile)
        return EXIT_OK
    if args.command == "check":
        return _check(args)
    if args.command == "adapters":
        return _adapters(args)
    if args.command == "evaluate":
        return _evaluate(args)
    templates = _templates(args)
    model = _load_model(args)
    if args.command == "train":
        _train(args, model, templates, args.out, args.resume)
        return EXIT_OK
    if args.command == "predict":
        return _predict(args, model, templates, args.adapter)
    if args.finetune:
        _train(args, model, templates, args.out / "adapter")
    return _predict(args, model, templates, None)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        from sam2pal.ui.serve import main as serve

        serve(rest, prog="sam2pal serve")
        return EXIT_OK
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if getattr(args, "nproc", 1) > 1 and args.command != "train":
        parser.error("--nproc is for `sam2pal train`; fine-tune with it, then predict with --adapter")
    if getattr(args, "nproc", 1) > 1 and "WORLD_SIZE" not in os.environ:
        from sam2pal.cluster.ddp import launch

        return launch(args.nproc, _without_nproc(sys.argv[1:] if argv is None else argv))
    try:
        return _dispatch(args)
    except SamPalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID

