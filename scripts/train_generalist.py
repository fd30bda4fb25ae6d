"""Train the built-in generalist nuclei model (`nuclei`) from the CC0 data in ../shared/data.

    .venv/bin/python scripts/train_generalist.py --out runs/nuclei --time-budget 4800

Data (see ../shared/data/README.md; all CC0):
- DSB 2018 fluorescence `dsb2018-fluo/pretrain` (341 images; Caicedo et al., Nature Methods 2019),
- BBBC039 `bbbc039/train` (150 U2OS Hoechst images; Caicedo et al., Cytometry A 2019; Ljosa et al., Nature
  Methods 2012), less `--hold-out` images kept unseen for the benchmarks;
- with `--other-hold-out N` (N >= 0), also the brightfield and stained-histology images of DSB 2018
  `dsb2018-other/train` (123 images, 107 RGB), less N held out (seeded) for the benchmarks, repeated
  `--other-repeat` times in the sampling so these kinds are not drowned by fluorescence.
Every image is seen as one grey plane: RGB becomes its ITU-R 709 luminance (`channels.ChannelChoice(grey=True)`,
saved with the model, so RGB images are converted the same way when they are segmented).
`--init MODEL` starts from a trained model (same architecture and object diameter) instead of random weights:
a second stage that adds data to a model trained before.
`dsb2018-fluo/train` is never trained on: it is the model's validation set (a few of its images are used for
the validation score printed during training, and benchmarks/bench_generalist.py scores all of it).

After training, the post-processing (threshold, watershed and its depth, seeds from the nuclei's cores; with
`--min-sizes`, the smallest object kept too) is tuned on every `--tune-every`th DSB training image (11th by default).
Every image is rescaled so that its median nucleus diameter (equivalent diameter of the labelled objects)
becomes the model's `--diameter`; scale augmentation (zoom in `--zoom`) teaches the network a range around it.
At inference `napari_unet` rescales an image by (model diameter / object diameter) before the network.
The run is resumable (`--resume`): kill it and start it again with the same arguments.
`--tune-only --init MODEL` trains nothing: it tunes MODEL's post-processing again (with this version's candidates,
e.g. after new post-processing settings were added) and saves MODEL with it to `--out`, as a stage of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet.augment import AugmentConfig
from napari_unet.channels import ChannelChoice
from napari_unet.model import UNet, UNetConfig
from napari_unet.modelfile import Normalization, load_model, save_model
from napari_unet.pipeline import read_training_pair
from napari_unet.postprocess import score_config, tune_config, tuning_record
from napari_unet.scale import median_diameter, rescale_image, rescale_labels
from napari_unet.tiling import predict_tiled
from napari_unet.train_config import gives_back_border
from napari_unet.training import Sample, TrainConfig, Trainer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VALIDATION_SET = "dsb2018-fluo/train"
OTHER_SET = "dsb2018-other/train"
GREY = ChannelChoice(grey=True)  # RGB -> luminance; grey images unchanged (io drops alpha)


def image_pairs(data: Path, name: str) -> list[tuple[Path, Path]]:
    images = sorted((data / name / "images").glob("*.png"))
    if not images:
        sys.exit(f"no images in {data / name / 'images'}: this script needs ../shared/data (see its README)")
    return [(path, data / name / "labels" / path.name) for path in images]


def held_out(pairs: list[tuple[Path, Path]], count: int, seed: int) -> set[str]:
    order = np.random.default_rng(seed).permutation(len(pairs))[:count]
    return {pairs[i][0].name for i in order}


def load_sample(image_path: Path, labels_path: Path, diameter: float) -> tuple[Sample, float] | None:
    """The image normalised and rescaled so its nuclei are `diameter` px across, with its factor; None when the
    image has no labelled nucleus (its size is unknown)."""
    image, labels, _ = read_training_pair(image_path, labels_path, channels=GREY)
    if not labels.any():
        return None
    factor = diameter / median_diameter(labels)
    return Sample(rescale_image(image, factor), rescale_labels(labels, factor)), factor


def earlier_stages(metadata: dict | None) -> list[dict]:
    """The training stages recorded in the `metadata` of the model a run starts from (`--init`; None: none),
    oldest first (a model without `stages` is one stage: its own command, steps and seconds)."""
    if metadata is None:
        return []
    if "stages" in metadata:
        return list(metadata["stages"])
    return [
        {
            "command": metadata.get("command"),
            "iterations": metadata.get("iterations"),
            "training_seconds": round(metadata.get("elapsed_seconds") or 0),
        }
    ]


def tune_on_training_images(
    bundle,
    pairs: list[tuple[Path, Path]],
    diameter: float,
    growth: bool = True,
    every: int = 11,
    min_sizes: tuple[int, ...] = (),
):
    """The post-processing (threshold, watershed and its depth, seeds, the smallest object of `min_sizes` if any,
    growth if `growth`) that segments every `every`th DSB training image best, at the model's scale (`postprocess.tune_config`: by
    mAP, then AP50); never tuned on the validation set. No growth for a network trained on the nuclei as annotated (w0 0, border 0), as
    `Trainer.calibrate_growth` does. Returns (config, the record for the model's metadata `postprocess_tuning`).
    """
    probs, truths = [], []
    for image_path, labels_path in pairs[::every]:
        result = load_sample(image_path, labels_path, diameter)
        if result is None:
            continue
        sample = result[0]
        image = bundle.normalization.apply_polarity(np.asarray(sample.image, np.float32)[None])
        probs.append(predict_tiled(bundle.net, image, device="cpu")[1])
        truths.append(sample.labels)
    tuned, scores = tune_config(
        probs,
        truths,
        bundle.postprocess,
        thresholds=(0.4, 0.5, 0.6, 0.7, 0.8),
        watershed=(False, True),
        grow_thresholds=None if growth else (None,),
        watershed_h=(1.0, 1.5, 2.0, 3.0, 4.0),
        min_sizes=min_sizes,
    )
    record = tuning_record(  # as `napari-unet train --tune-postprocess` records it
        images=f"{len(probs)} images: one in {every} of dsb2018-fluo/pretrain, at the model's scale",
        by="map, ap50",
        before=score_config(bundle.postprocess, probs, truths),
        before_config=bundle.postprocess,
        scores=scores,
        chosen=tuned,
    )
    return tuned, record


def command(argv: list[str] | None) -> str:
    return "python scripts/train_generalist.py " + " ".join(argv if argv is not None else sys.argv[1:])


def tune_only(start, args: argparse.Namespace, argv: list[str] | None) -> int:
    """`--tune-only`: `start` with its post-processing tuned again, saved to `--out` with the tuning as a stage."""
    started = time.time()
    trained_with = TrainConfig.from_dict(start.metadata["training"]) if "training" in start.metadata else None
    growth = trained_with is None or gives_back_border(trained_with)
    tuned, record = tune_on_training_images(
        start,
        image_pairs(args.data, "dsb2018-fluo/pretrain"),
        start.object_diameter,
        growth=growth,
        every=args.tune_every,
        min_sizes=tuple(args.min_sizes),
    )
    start.postprocess = tuned
    start.metadata.update(
        {
            "postprocess_tuning": record,
            "stages": earlier_stages(start.metadata)
            + [{"command": command(argv), "iterations": 0, "training_seconds": 0, "tuned_post_processing": True}],
        }
    )
    save_model(args.out, start)
    print(
        f"saved {args.out}: post-processing tuned in {time.time() - started:.0f} s: {tuned.to_dict()} "
        f"(AP50 {record['scores']['ap50']:.3f}, mAP {record['scores']['map']:.3f} on the tuning images; before "
        f"{record['before']['ap50']:.3f}, {record['before']['map']:.3f})",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (checkpointed)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--time-budget", type=float, default=4800.0, help="seconds of training steps")
    parser.add_argument("--diameter", type=float, default=20.0, help="nucleus diameter the network sees (px)")
    parser.add_argument("--zoom", type=float, nargs=2, default=(0.67, 1.5), help="scale augmentation range")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--tile-size", type=int, default=380)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--w0", type=float, default=20.0)
    parser.add_argument("--sigma", type=float, default=5.0)
    # stages 1 and 2 of the shipped model trained with a separation border and balanced classes (the defaults
    # here, so their recorded commands still mean what they did); `--w0 0 --border 0 --class-weights none` is
    # the fast preset's plain cross-entropy
    parser.add_argument("--border", type=int, default=1, help="background border (px) cut between touching nuclei")
    parser.add_argument("--class-weights", choices=("balanced", "none"), default="balanced")
    parser.add_argument("--hold-out", type=int, default=10, help="BBBC039 images kept out of training")
    parser.add_argument(
        "--other-hold-out",
        type=int,
        default=-1,
        help="train on dsb2018-other/train (brightfield, histology) less this many images (seeded); -1: not at all",
    )
    parser.add_argument("--other-repeat", type=int, default=2, help="times each dsb2018-other image is in the pool")
    parser.add_argument("--init", default=None, help="a trained model to start from (folder or built-in name)")
    parser.add_argument("--seed", type=int, default=0, help="which images are held out (and, by default, --train-seed)")
    parser.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="the training's random stream (crops, augmentation); default --seed. A later stage from --init gets "
        "new crops with another value while holding out the same images",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument(
        "--tune-only", action="store_true", help="train nothing: tune --init's post-processing again, save to --out"
    )
    parser.add_argument(
        "--tune-every", type=int, default=11, help="tune the post-processing on every Nth DSB training image"
    )
    parser.add_argument(
        "--min-sizes",
        type=int,
        nargs="+",
        default=(),
        metavar="PX",
        help="smallest object sizes (px at the model's scale) for the tuning to try besides the model's own "
        "(default: the model's own only; 16 24 32 48 64 was measured and not shipped, docs/models.md)",
    )
    args = parser.parse_args(argv)
    if args.tune_every < 1:
        parser.error(f"--tune-every must be a positive whole number, got {args.tune_every}")
    if any(size < 0 for size in args.min_sizes):
        parser.error(f"--min-sizes must be whole numbers >= 0, got {' '.join(map(str, args.min_sizes))}")
    torch.set_num_threads(args.threads)

    started = time.time()
    start = load_model(args.init) if args.init is not None else None  # the weights and stages to build on
    if args.tune_only:
        if start is None:
            parser.error("--tune-only needs --init MODEL, the model to tune")
        return tune_only(start, args, argv)
    if start is not None:
        args.diameter = start.object_diameter  # the data is rescaled to the starting model's object size
    bbbc = image_pairs(args.data, "bbbc039/train")
    kept_out = held_out(bbbc, args.hold_out, args.seed)
    pairs = [p for p in image_pairs(args.data, "dsb2018-fluo/pretrain")] + [
        p for p in bbbc if p[0].name not in kept_out
    ]
    other_kept_out: set[str] = set()
    if args.other_hold_out >= 0:
        other = image_pairs(args.data, OTHER_SET)
        other_kept_out = held_out(other, args.other_hold_out, args.seed)
        pairs += [p for p in other if p[0].name not in other_kept_out]
    loaded = [(pair, load_sample(*pair, args.diameter)) for pair in pairs]
    skipped = [pair[0].name for pair, result in loaded if result is None]
    pairs = [pair for pair, result in loaded if result is not None]
    samples = [result[0] for _, result in loaded if result is not None]
    factors = [result[1] for _, result in loaded if result is not None]
    pool = samples + [s for pair, s in zip(pairs, samples) if OTHER_SET in str(pair[0])] * (args.other_repeat - 1)
    validation_pairs = image_pairs(args.data, VALIDATION_SET)[::12]
    validation = [result[0] for result in (load_sample(*pair, args.diameter) for pair in validation_pairs) if result]
    print(
        f"{len(samples)} training images ({len(skipped)} without nuclei skipped, pool of {len(pool)}) (rescale factors {min(factors):.2f}..{max(factors):.2f}), "
        f"{len(validation)} validation images, loaded in {time.time() - started:.0f} s",
        flush=True,
    )

    augment = AugmentConfig(scale=tuple(args.zoom), scale_p=1.0)
    config = TrainConfig(
        iterations=10**6,
        learning_rate=args.learning_rate,
        schedule="cosine",
        tile_size=args.tile_size,
        batch_size=args.batch_size,
        w0=args.w0,
        sigma=args.sigma,
        border=args.border,
        class_weights=args.class_weights,
        augment=augment,
        validate_every=2000,
        checkpoint_every=250,
        seed=args.seed if args.train_seed is None else args.train_seed,
        time_budget=args.time_budget,
    )
    if args.resume and (args.out / "training_state.pt").is_file():
        trainer = Trainer.resume(args.out, pool, validation, device="cpu", time_budget=args.time_budget)
    else:
        if start is not None:
            net = start.net
        else:
            net = UNet(UNetConfig(depth=args.depth, base_channels=args.base_channels, dropout=0.0))
        trainer = Trainer(
            net,
            config,
            pool,
            validation,
            device="cpu",
            checkpoint=args.out,
            normalization=Normalization(invert="auto"),
            object_diameter=args.diameter,
            channels=GREY,
        )
    last_print = 0.0
    for event in trainer.run():
        if event.kind == "validation" or time.time() - last_print > 60:
            last_print = time.time()
            score = f" val IoU {event.val_score:.3f}" if event.val_score is not None else ""
            print(
                f"{event.kind} {event.iteration} loss {event.loss:.4f} lr {event.learning_rate:.2e} "
                f"{event.elapsed:.0f} s{score}",
                flush=True,
            )

    bundle = load_model(args.out)
    bundle.object_diameter = args.diameter
    stages = earlier_stages(None if start is None else start.metadata) + [
        {
            "command": command(argv),
            "iterations": trainer.iteration,
            "training_seconds": round(trainer.elapsed),
        }
    ]
    tuned, record = tune_on_training_images(
        bundle,
        image_pairs(args.data, "dsb2018-fluo/pretrain"),
        args.diameter,
        growth=gives_back_border(config),
        every=args.tune_every,
        min_sizes=tuple(args.min_sizes),
    )
    bundle.postprocess = tuned
    bundle.channels = GREY
    bundle.metadata.update(
        {
            "name": "nuclei",
            "description": "Generalist nuclei model, trained on fluorescence images (bright nuclei on a dark "
            "background)"
            + (" and on brightfield and stained histology (DSB 2018)" if args.other_hold_out >= 0 else "")
            + "; RGB images are seen as their luminance; bright-background images are inverted automatically "
            "(normalization.invert = auto).",
            "postprocess_tuning": record,
            "license": "BSD-3-Clause (weights); trained only on CC0 data",
            "training_data": {
                "dsb2018-fluo/pretrain": [p[0].name for p in pairs if "dsb2018-fluo" in str(p[0])],
                "bbbc039/train": [p[0].name for p in pairs if "bbbc039" in str(p[0])],
                "held_out_bbbc039": sorted(kept_out),
                OTHER_SET: [p[0].name for p in pairs if OTHER_SET in str(p[0])],
                "held_out_dsb2018_other": sorted(other_kept_out),
                "skipped_without_nuclei": skipped,
            },
            "citations": [
                "Ronneberger, Fischer, Brox. U-Net. MICCAI 2015.",
                "Caicedo et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
                "Nature Methods 16:1247 (2019). CC0.",
                "Caicedo et al. Evaluation of deep learning strategies for nucleus segmentation in fluorescence "
                "images. Cytometry A 95:952 (2019). BBBC039v1, CC0.",
                "Ljosa, Sokolnicki, Carpenter. Annotated high-throughput microscopy image sets for validation. "
                "Nature Methods 9:637 (2012).",
            ],
            "command": command(argv),
            "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{args.threads} torch threads, device cpu",
            "wall_seconds": round(time.time() - started),
            "stages": stages,
        }
    )
    save_model(args.out, bundle)
    (args.out / "training_log.json").write_text(
        json.dumps({"iterations": trainer.iteration, "elapsed": trainer.elapsed}, indent=2)
    )
    print(f"saved {args.out}: {trainer.iteration} steps, {trainer.elapsed:.0f} s of training", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
