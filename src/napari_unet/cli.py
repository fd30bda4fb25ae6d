"""The `napari-unet` command: train, predict, weights, evaluate, demo and info.

Each subcommand translates its arguments into the config objects the library uses (`preset`, `TrainConfig`,
`PostprocessConfig`, ...) and consumes the same generators as the napari widgets (`Trainer.run`,
`pipeline.segment_file`), drawing a progress bar on stderr. Results and summaries go to stdout.

Exit codes: 0 success; 1 training diverged (the last good state is kept); 2 bad input (a one-line
"napari-unet: error: ..." message; `napari-unet --traceback ...` shows the traceback); 130 interrupted
(a training run saves its last completed step first).

>>> main(["weights", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEVICES = ("auto", "cpu", "cuda", "mps")
SCORE_COLUMNS = {
    "isbi": ("vrand", "vinfo", "iou", "pixel_error"),
    "instances": ("ap50", "map", "f1_50", "seg", "n_pred", "n_true"),
    "pixels": ("iou", "pixel_error"),
}
DEMO_IMAGES = 4  # synthetic training images (one of them held out for validation), plus one test image
DEMO_SHAPE = (256, 256)
DEMO_ITERATIONS = 600


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse has already explained
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as error:  # bad input: files, shapes, options; FileNotFoundError is an OSError
        if args.traceback:
            raise
        print(f"napari-unet: error: {error}", file=sys.stderr)
        return EXIT_USAGE


# ------------------------------------------------------------------------------------------------ parser


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs, keeps indented example lines as written, shows the defaults that say something."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        paragraphs = []
        for paragraph in text.split("\n\n"):
            if paragraph.startswith("  ") or "\n  " in paragraph:
                paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                paragraphs.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                                subsequent_indent=indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), e.g. 0.2, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net (Ronneberger et al. 2015) for cell segmentation: train on a few annotated images, "
        "segment new ones, score them.",
        epilog="Run 'napari-unet COMMAND --help' for each command's options; 'napari-unet demo' for a tour.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback of input errors")
    parser.set_defaults(traceback=False)
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    _add_predict(commands)
    _add_weights(commands)
    _add_evaluate(commands)
    _add_demo(commands)
    _add_info(commands)
    return parser


def _command(commands, name: str, summary: str, description: str, examples: str, handler) -> argparse.ArgumentParser:
    sub = commands.add_parser(
        name, help=summary, description=f"{summary}\n\n{description}".strip(),
        epilog=f"examples:\n{examples}", formatter_class=_HelpFormatter,
    )
    sub.set_defaults(handler=handler)
    return sub


def _add_device(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,mps}",
                     help="where the network runs ('cuda:1' picks a GPU); auto: CUDA, then MPS, then the CPU")


def _add_quiet(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_train(commands) -> None:
    sub = _command(
        commands, "train", "Train a U-Net on annotated images and save it as a model folder.",
        "IMAGES and LABELS are folders whose files pair by base name (01.png with 01.tif; a '_labels' suffix is "
        "tolerated) or two single files. Labels: instance ids (0 = background, one id per cell) or a binary "
        "mask (e.g. ISBI: 0 = membrane, 255 = cell). Sparse annotation: --mask (nonzero = annotated), or the "
        "reserved value -1 (int) / 65535 (uint16) in the label files. Images are normalised with their 1st and "
        "99.8th percentiles. The model folder is written at every checkpoint, at the end, and when stopped "
        "with Ctrl-C; continue a stopped run with --resume.",
        "  napari-unet train data/images data/labels --out cells.model --val-fraction 0.2\n"
        "  napari-unet train new/images new/labels --out tuned.model --init cells.model --iterations 200\n"
        "  napari-unet train data/images data/labels --out cells.model --resume --iterations 800",
        _train,
    )
    sub.add_argument("images", type=Path, help="image file or folder")
    sub.add_argument("labels", type=Path, help="label file or folder (matched to the images by base name)")
    sub.add_argument("--out", type=Path, required=True, metavar="MODEL", help="model folder to write")
    start = sub.add_argument_group("what to start from")
    start.add_argument("--preset", choices=("fast", "paper"), default="fast",
                       help="fast: small net for a CPU; paper: the 2015 network and SGD schedule")
    start.add_argument("--init", type=Path, metavar="MODEL", help="fine-tune a saved model instead of a new net")
    start.add_argument("--resume", action="store_true",
                       help="continue the run saved in --out exactly where it stopped (only --iterations and "
                       "--time-budget may change)")
    start.add_argument("--overwrite", action="store_true", help="replace an existing model folder at --out")
    start.add_argument("--depth", type=_positive_int, metavar="N", help="new net: resolution levels (preset's by default)")
    start.add_argument("--base-channels", type=_positive_int, metavar="N", help="new net: features at the first level")
    data = sub.add_argument_group("data")
    data.add_argument("--mask", type=Path, metavar="PATH",
                      help="mask file or folder (nonzero = annotated), matched to the images by base name")
    data.add_argument("--validation-images", type=Path, metavar="PATH", help="validation image file or folder")
    data.add_argument("--validation-labels", type=Path, metavar="PATH", help="validation label file or folder")
    data.add_argument("--val-fraction", type=_fraction, metavar="F",
                      help="hold out this fraction of the images (whole images, chosen with --seed) for validation")
    training = sub.add_argument_group("training (preset's values by default)")
    training.add_argument("--iterations", type=_positive_int, metavar="N", help="training steps in all")
    training.add_argument("--time-budget", type=_positive_float, metavar="SECONDS",
                          help="stop (and save) once training has run this long")
    training.add_argument("--seed", type=int, default=0, help="random seed (sampling, augmentation, split)")
    training.add_argument("--tile-size", type=_positive_int, metavar="N",
                          help="side of the network's input window (rounded up to a valid size)")
    training.add_argument("--batch-size", type=_positive_int, metavar="N", help="windows per step")
    training.add_argument("--learning-rate", type=_positive_float, metavar="LR", help="optimiser step size")
    training.add_argument("--w0", type=_non_negative_float, metavar="W", help="weight of the border term between cells")
    training.add_argument("--sigma", type=_positive_float, metavar="PX", help="width (px) of the border term")
    training.add_argument("--border", type=_positive_int, metavar="PX", help="background border (px) cut between touching cells")
    training.add_argument("--tune-postprocess", action="store_true",
                          help="after training, choose the threshold, watershed and growth settings that give the best AP50 "
                          "on the validation images (instance labels) and save them with the model")
    _add_device(sub)
    _add_quiet(sub)


def _add_predict(commands) -> None:
    sub = _command(
        commands, "predict", "Segment images with a trained model.",
        "Writes OUT/<name>_labels.tif (int32 instance ids, 0 = background) for each input, and with "
        "--probabilities OUT/<name>_probs.tif (float32 foreground probability). INPUT: files (TIFF, PNG, JPEG, "
        ".zarr) or folders of them. Stacks and time series are segmented plane by plane (ids restart in each "
        "plane); large images are read and written through memory maps, one plane at a time.",
        "  napari-unet predict cells.model data/new --out results\n"
        "  napari-unet predict cells.model movie.tif --out results --probabilities --tta",
        _predict,
    )
    sub.add_argument("model", type=Path, help="model folder")
    sub.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="image file or folder")
    sub.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the results")
    sub.add_argument("--probabilities", action="store_true", help="also write the foreground probability")
    sub.add_argument("--tta", action="store_true",
                     help="test-time augmentation: mean over the 8 flips and rotations (8x slower)")
    sub.add_argument("--tile-size", type=_positive_int, metavar="N",
                     help="output side of a tile (default: the largest that fits in memory)")
    sub.add_argument("--batch-size", type=_positive_int, default=1, metavar="N", help="tiles per forward pass")
    sub.add_argument("--axes", metavar="AXES", help="axes of the inputs as stored, e.g. YXC, TYX (default: read "
                     "from the file's metadata or guessed)")
    post = sub.add_argument_group("post-processing (the model's saved settings by default)")
    post.add_argument("--threshold", type=_probability, metavar="T", help="foreground where probability > T")
    post.add_argument("--min-size", type=_non_negative_int, metavar="N", help="remove objects under N pixels")
    post.add_argument("--watershed", action=argparse.BooleanOptionalAction, default=None,
                      help="split merged cells with a distance-transform watershed")
    post.add_argument("--grow-threshold", type=_probability, metavar="G",
                      help="objects grow into the neighbouring pixels with probability > G (a value >= the "
                      "threshold turns this off)")
    _add_device(sub)
    _add_quiet(sub)


def _add_weights(commands) -> None:
    sub = _command(
        commands, "weights", "Write the loss weight map of a label image (the paper's eq. 2) as a float32 TIFF.",
        "w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2)) on the background, with d1, d2 the distances to the two "
        "nearest cells after cutting borders between touching cells; w_c balances the class frequencies.",
        "  napari-unet weights labels/01.png --out weights_01.tif --w0 10 --sigma 5",
        _weights,
    )
    sub.add_argument("labels", type=Path, help="label image file")
    sub.add_argument("--out", type=Path, required=True, metavar="FILE", help="TIFF file to write")
    sub.add_argument("--w0", type=_non_negative_float, default=10.0, metavar="W", help="weight of the border term")
    sub.add_argument("--sigma", type=_positive_float, default=5.0, metavar="PX", help="width (px) of the border term")
    sub.add_argument("--border", type=_positive_int, default=1, metavar="PX", help="background border (px) between touching cells")
    sub.add_argument("--no-balance", action="store_true", help="w_c = 1 instead of balancing class frequencies")
    sub.add_argument("--mask", type=Path, metavar="FILE", help="annotated region (nonzero); weight 0 elsewhere")


def _add_evaluate(commands) -> None:
    sub = _command(
        commands, "evaluate", "Score predictions against ground truth.",
        "PRED and TRUTH are files or folders paired by base name (a '_labels' or '_probs' suffix on predictions "
        "is tolerated). Kinds: instances (AP at IoU 0.5, mAP over 0.5:0.95, F1, SEG; integer labels); isbi "
        "(ISBI 2012 V_rand and V_info, best over thresholds 0.0..1.0 of a float probability TIFF, thinned; "
        "truth: nonzero = cell interior, 0 = membrane; plus IoU and pixel error); pixels (IoU, pixel error). "
        "Stacks are scored plane by plane.",
        "  napari-unet evaluate results data/test/labels\n"
        "  napari-unet evaluate results isbi/labels --kind isbi --json > scores.json",
        _evaluate,
    )
    sub.add_argument("pred", type=Path, help="prediction file or folder")
    sub.add_argument("truth", type=Path, help="ground-truth file or folder")
    sub.add_argument("--kind", choices=("instances", "isbi", "pixels"), default="instances",
                     help="which scores (see above)")
    sub.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sub.add_argument("--threshold", type=_probability, default=0.5, metavar="T",
                     help="binarise float predictions at this probability for the pixel scores")
    sub.add_argument("--no-thinning", action="store_true", help="isbi: score without thinning the borders")


def _add_demo(commands) -> None:
    sub = _command(
        commands, "demo", "Train on synthetic cells, segment a held-out image and write a small report.",
        "Writes into DIR: the synthetic data (data/), the trained model (model/), the prediction "
        "(predictions/), overlay.png (image with predicted outlines in magenta, true ones in green), "
        "report.json and report.md (instance and pixel scores).",
        "  napari-unet demo --out demo\n  napari-unet demo --out demo --iterations 600 --seed 1",
        _demo,
    )
    sub.add_argument("--out", type=Path, default=Path("napari-unet-demo"), metavar="DIR", help="report folder")
    sub.add_argument("--iterations", type=_positive_int, default=DEMO_ITERATIONS, metavar="N", help="training steps")
    sub.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of the training")
    _add_device(sub)
    _add_quiet(sub)


def _add_info(commands) -> None:
    sub = _command(
        commands, "info", "Show a model's architecture, settings and training metadata.", "",
        "  napari-unet info cells.model\n  napari-unet info cells.model --json", _info,
    )
    sub.add_argument("model", type=Path, help="model folder")
    sub.add_argument("--json", action="store_true", help="print the stored configuration as JSON")


# ---------------------------------------------------------------------------------------------- progress


class Progress:
    """A tqdm progress bar on stderr, or plain lines every ~10% when tqdm is missing; nothing when quiet."""

    def __init__(self, total: float, description: str, unit: str = "it", quiet: bool = False):
        self.total, self.description, self.unit, self.quiet = total, description, unit, quiet
        self.done = 0.0
        self._bar = None
        self._last_line = -1
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: float = 1, **postfix: Any) -> None:
        self.done += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=not n)
            if n:
                self._bar.update(n)
        elif n and not self.quiet:
            tenth = int(10 * self.done / self.total) if self.total else 10
            if tenth > self._last_line or self.done >= self.total:
                self._last_line = tenth
                extra = "".join(f", {k} {v}" for k, v in postfix.items())
                print(f"{self.description}: {self.done:g}/{self.total:g} {self.unit}{extra}", file=sys.stderr)

    def write(self, message: str) -> None:
        """A line on stderr that does not break the bar."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _note(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr)


# ------------------------------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> int:
    from .training import TrainingDiverged

    out = args.out
    _check_train_options(args)
    train, validation = _training_data(args)
    trainer = _make_trainer(args, train, validation)
    _note(f"training on {len(train)} image(s), validating on {len(validation)}; "
          f"device: {_describe(trainer.device)}", args.quiet)
    try:
        result = _run_training(trainer, args.quiet)
    except TrainingDiverged as error:
        print(f"napari-unet: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    if result["stopped"]:
        print(f"stopped at iteration {result['iteration']}; the model is saved in {out} "
              f"(continue with: napari-unet train ... --out {out} --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(_summary(result, out))
    if args.tune_postprocess:
        tuned = _tune_postprocess(trainer, validation)
        print(_describe_tuning(tuned) if tuned else "post-processing not tuned: no fully annotated validation "
              "image with instance labels")
    return EXIT_OK


def _check_train_options(args: argparse.Namespace) -> None:
    from .modelfile import is_model_folder, load_model

    new_net = {"--depth": args.depth, "--base-channels": args.base_channels}
    if args.resume:
        fixed = {"--init": args.init, "--seed": args.seed or None, "--tile-size": args.tile_size,
                 "--batch-size": args.batch_size, "--learning-rate": args.learning_rate, "--w0": args.w0,
                 "--sigma": args.sigma, "--border": args.border, "--preset": args.preset != "fast" or None, **new_net}
        given = [name for name, value in fixed.items() if value is not None]
        if given:
            raise ValueError(f"--resume continues the saved run as it was; {', '.join(given)} cannot change "
                             "(only --iterations and --time-budget can)")
        if not is_model_folder(args.out):
            raise ValueError(f"--resume: {args.out} is not a model folder saved by 'napari-unet train'")
        args.seed = int(load_model(args.out).metadata.get("seed", 0))  # the same validation split as before
        return
    if args.init is not None and any(v is not None for v in new_net.values()):
        raise ValueError("--depth and --base-channels describe a new net; with --init the saved net is used")
    if args.out.exists():
        if is_model_folder(args.out):
            if not args.overwrite:
                raise ValueError(f"{args.out} already holds a model: continue it with --resume, or replace it "
                                 "with --overwrite")
        elif not args.out.is_dir() or any(args.out.iterdir()):
            raise ValueError(f"--out {args.out} exists and is not a model folder; choose a new path")
    if (args.validation_images is None) != (args.validation_labels is None):
        raise ValueError("give both --validation-images and --validation-labels, or neither")
    if args.validation_images is not None and args.val_fraction is not None:
        raise ValueError("give either validation files or --val-fraction, not both")
    if args.tune_postprocess and args.validation_images is None and args.val_fraction is None:
        raise ValueError("--tune-postprocess needs validation images (--val-fraction or --validation-images)")


def _training_data(args: argparse.Namespace):
    """(train, validation) lists of Sample, read from the files the arguments name."""
    from .pipeline import list_files, match_files, split_by_image

    match = match_files(list_files(args.images, "image"), list_files(args.labels, "label"))
    _warn_unmatched(match, ("images without labels (skipped)", "labels without images (skipped)"), args.quiet)
    pairs = match.pairs
    masks = _masks_for(args.mask, [image for image, _ in pairs], args.quiet) if args.mask else {}
    validation_pairs: list[tuple[Path, Path]] = []
    if args.validation_images is not None:
        validation = match_files(list_files(args.validation_images, "validation image"),
                                 list_files(args.validation_labels, "validation label"))
        _warn_unmatched(validation, ("validation images without labels", "validation labels without images"),
                        args.quiet)
        validation_pairs = validation.pairs
    elif args.val_fraction is not None:
        pairs, validation_pairs = split_by_image(pairs, args.val_fraction, args.seed)
        _note("validation images: " + ", ".join(p.name for p, _ in validation_pairs), args.quiet)
    train = [_sample(image, labels, masks.get(image)) for image, labels in pairs]
    validation_samples = [_sample(image, labels, masks.get(image)) for image, labels in validation_pairs]
    channels = {s.image.shape[0] if s.image.ndim == 3 else 1 for s in train + validation_samples}
    if len(channels) > 1:
        raise ValueError(f"the images have different numbers of channels {sorted(channels)}; they must agree")
    return train, validation_samples


def _masks_for(path: Path, images: list[Path], quiet: bool) -> dict[Path, Path]:
    from .pipeline import list_files, match_files

    masks = list_files(path, "mask")
    if len(masks) == 1 and len(images) > 1 and path.is_file():
        raise ValueError(f"--mask {path} is one file but there are {len(images)} images: give a folder of masks")
    match = match_files(images, masks, ("images", "masks"))
    if match.unmatched_first:
        _note(f"note: {len(match.unmatched_first)} image(s) have no mask and count as annotated everywhere: "
              + ", ".join(p.name for p in match.unmatched_first[:5]), quiet)
    return dict(match.pairs)


def _sample(image_path: Path, labels_path: Path, mask_path: Path | None = None):
    from .pipeline import read_training_pair
    from .training import Sample

    return Sample(*read_training_pair(image_path, labels_path, mask_path))


def _warn_unmatched(match, what: tuple[str, str], quiet: bool) -> None:
    for files, text in zip((match.unmatched_first, match.unmatched_second), what):
        if files:
            shown = ", ".join(p.name for p in files[:5]) + (", ..." if len(files) > 5 else "")
            _note(f"note: {len(files)} {text}: {shown}", quiet)


def _make_trainer(args: argparse.Namespace, train, validation):
    from dataclasses import replace

    from .model import UNet
    from .modelfile import load_model
    from .pipeline import with_overrides
    from .training import Trainer, preset

    if args.resume:
        overrides = {k: v for k, v in {"iterations": args.iterations, "time_budget": args.time_budget}.items()
                     if v is not None}
        saved = load_model(args.out).metadata.get("data_hashes")
        trainer = Trainer.resume(args.out, train, validation, device=args.device, **overrides)
        if saved is not None and sorted(saved) != sorted(trainer.data_hashes):
            _note("note: the training images differ from those of the saved run", args.quiet)
        return trainer
    net_config, config = preset(args.preset)
    config = with_overrides(
        config, iterations=args.iterations, time_budget=args.time_budget, seed=args.seed, tile_size=args.tile_size,
        batch_size=args.batch_size, learning_rate=args.learning_rate, w0=args.w0, sigma=args.sigma,
        border=args.border,
    )
    if args.init is not None:
        bundle = load_model(args.init)
        postprocess = replace(bundle.postprocess, border_width=config.border) if args.border else bundle.postprocess
        return Trainer(bundle.net, config, train, validation, args.device, args.out, bundle.normalization,
                       postprocess)
    channels = train[0].image.shape[0] if train[0].image.ndim == 3 else 1
    net_config = with_overrides(net_config, in_channels=channels, depth=args.depth, base_channels=args.base_channels)
    import torch

    torch.manual_seed(config.seed)  # the new network's initial weights follow --seed too
    return Trainer(UNet(net_config), config, train, validation, args.device, args.out)


def _run_training(trainer, quiet: bool) -> dict[str, Any]:
    """Consume `trainer.run()` with a progress bar; Ctrl-C stops it (the trainer saves its last step)."""
    from contextlib import closing

    result: dict[str, Any] = {"stopped": False, "val_score": None, "loss": float("nan")}
    events = trainer.run()
    total = trainer.config.iterations
    with Progress(total, "training", "it", quiet) as bar, closing(events):
        bar.update(trainer.iteration)
        try:
            for event in events:
                if event.kind == "step":
                    bar.update(1, loss=f"{event.loss:.4f}")
                elif event.kind == "validation" and event.val_score is not None:
                    result["val_score"] = event.val_score
                    bar.write(f"iteration {event.iteration}: validation IoU {event.val_score:.4f}")
                result.update(iteration=event.iteration, elapsed=event.elapsed, loss=event.loss)
        except KeyboardInterrupt:
            result["stopped"] = True
    result["iteration"] = trainer.iteration
    result["elapsed"] = trainer.elapsed
    result["device"] = _describe(trainer.device)
    return result


def _tune_postprocess(trainer, validation) -> dict[str, Any] | None:
    """Choose the post-processing on the validation samples with instance labels and save it with the model.

    Returns {"config", "scores", "before"} (mean AP50 etc. with the chosen and the previous settings), or None
    when no validation sample is fully annotated with instance labels (binary masks such as ISBI's are not).
    """
    from .pipeline import tune_postprocess
    from .targets import annotation_mask, is_binary
    from .tiling import predict_tiled

    usable = [s for s in validation if s.mask is None and not is_binary(s.labels) and annotation_mask(s.labels).all()]
    if not usable:
        return None
    probs = [predict_tiled(trainer.model, s.image, device=trainer.device)[1] for s in usable]
    truths = [np.asarray(s.labels).astype(np.int64) for s in usable]
    _, before = tune_postprocess(probs, truths, trainer.postprocess, thresholds=(), watershed=(),
                                 grow_thresholds=())
    config, scores = tune_postprocess(probs, truths, trainer.postprocess)
    trainer.postprocess = config
    if trainer.checkpoint is not None:
        trainer.save_checkpoint(trainer.checkpoint)
    return {"config": config, "scores": scores, "before": before, "images": len(usable)}


def _describe_tuning(tuned: dict[str, Any]) -> str:
    config = tuned["config"]
    return (f"post-processing tuned on {tuned['images']} validation image(s): threshold {config.threshold}, "
            f"watershed {'on' if config.watershed else 'off'}, growth to {_growth(config)} "
            f"(AP50 {tuned['scores']['ap50']:.3f}, "
            f"{tuned['before']['ap50']:.3f} before); saved with the model")


def _growth(config: Any) -> str:
    """How far objects grow (post-processing step 5), in words: "p > 0.1", or "off"."""
    return f"p > {config.grow_threshold}" if config.grows else "off"


def _summary(result: dict[str, Any], out: Path) -> str:
    score = result["val_score"]
    validation = f"validation IoU {score:.4f}" if score is not None else "no validation images"
    return (f"trained {result['iteration']} iterations in {_duration(result['elapsed'])} on {result['device']}: "
            f"loss {result['loss']:.4f}, {validation}; model saved to {out}")


# ----------------------------------------------------------------------------------------------- predict


def _predict(args: argparse.Namespace) -> int:
    from .device import select_device
    from .modelfile import load_model
    from .pipeline import count_planes, list_files, output_paths, read_input, segment_file, with_overrides

    bundle = load_model(args.model)
    postprocess = with_overrides(bundle.postprocess, threshold=args.threshold, min_size=args.min_size,
                                 watershed=args.watershed, grow_threshold=args.grow_threshold)
    device = select_device(args.device)
    files = [f for path in args.inputs for f in list_files(path, "input image", zarr=True)]
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder")
    outputs = [output_paths(f, args.out, args.probabilities) for f in files]
    seen: dict[Path, Path] = {}
    for path, out in zip(files, outputs):
        if out.labels in seen:
            raise ValueError(f"{seen[out.labels]} and {path} would both be written to {out.labels}: rename one")
        seen[out.labels] = path
    _note(f"segmenting {len(files)} image(s) on {_describe(device)}" + (" with 8x test-time augmentation"
          if args.tta else ""), args.quiet)
    started, planes, objects = time.perf_counter(), 0, 0
    with Progress(len(files), "predicting", "image", args.quiet) as bar:
        for path, out in zip(files, outputs):
            image, axes = read_input(path, args.axes)
            n = count_planes(image, axes)
            found = 0
            for done in segment_file(bundle, image, axes, out, postprocess=postprocess, tile_size=args.tile_size,
                                     device=device, batch_size=args.batch_size, tta=args.tta):
                found += done.objects
                bar.update(int(done.index + 1 == n), file=path.name, plane=f"{done.index + 1}/{n}")
            bar.write(f"{path.name}: {found} objects in {n} plane(s) -> {out.labels}")
            planes, objects = planes + n, objects + found
            del image
    print(f"segmented {len(files)} image(s) ({planes} plane(s), {objects} objects) in "
          f"{_duration(time.perf_counter() - started)}; results in {args.out}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- weights


def _weights(args: argparse.Namespace) -> int:
    from .io import read_labels, write_tiff
    from .weights import weight_map

    if args.labels.is_dir():
        raise ValueError(f"{args.labels} is a folder; weights takes one label image file")
    labels = read_labels(args.labels)
    mask = read_labels(args.mask) if args.mask is not None else None
    weights = weight_map(labels, args.w0, args.sigma, class_weights=None if args.no_balance else "balanced",
                         mask=mask, border=args.border)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tiff(args.out, weights, "YX")
    print(f"weight map {weights.shape[0]}x{weights.shape[1]} (min {np.min(weights):.3g}, mean "
          f"{np.mean(weights):.3g}, max {np.max(weights):.3g}) written to {args.out}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- evaluate


def _evaluate(args: argparse.Namespace) -> int:
    from .io import read_image
    from .metrics import average_scores, evaluate_pair
    from .pipeline import list_files, match_files

    match = match_files(list_files(args.pred, "prediction"), list_files(args.truth, "ground-truth"),
                        ("predictions", "ground truth"), prefer="_probs" if args.kind == "isbi" else "_labels")
    _warn_unmatched(match, ("predictions without ground truth (skipped)", "ground truth without predictions"),
                    False)
    scores: dict[str, dict[str, Any]] = {}
    for pred_path, truth_path in match.pairs:
        pred, truth = np.asarray(read_image(pred_path)[0]), np.asarray(read_image(truth_path)[0])
        if pred.shape != truth.shape:
            raise ValueError(f"prediction {pred_path.name} has shape {pred.shape} but its ground truth "
                             f"{truth_path.name} has {truth.shape}")
        for index in np.ndindex(*pred.shape[:-2]):
            name = pred_path.name if pred.ndim == 2 else f"{pred_path.name}{list(index)}"
            try:
                scores[name] = evaluate_pair(pred[index], truth[index], args.kind, threshold=args.threshold,
                                             thinned=not args.no_thinning)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{pred_path.name} against {truth_path.name}: {error}") from None
    mean = average_scores(list(scores.values()))
    if args.json:
        print(json.dumps({"kind": args.kind, **mean, "images": scores}, indent=2, default=float))
    else:
        print(_table(scores, mean, SCORE_COLUMNS[args.kind]))
    return EXIT_OK


def _table(scores: dict[str, dict[str, Any]], mean: dict[str, Any], columns: Sequence[str]) -> str:
    columns = [c for c in columns if c in mean]
    rows = [[name] + [_cell(s[c]) for c in columns] for name, s in scores.items()]
    rows.append([f"mean ({mean['n_images']})"] + [_cell(mean[c]) for c in columns])
    header = ["image", *columns]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) <= 1 else f"{value:.1f}"
    return str(value)


# -------------------------------------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    import shutil

    from .io import normalize_percentile, write_tiff
    from .metrics import instance_scores, pixel_scores
    from .model import UNet
    from .modelfile import is_model_folder
    from .pipeline import Outputs, segment_file
    from .synthetic import make_dataset
    from .training import Sample, Trainer, preset

    out = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    model_dir = out / "model"
    data = make_dataset(DEMO_IMAGES + 1, DEMO_SHAPE, seed=args.seed)
    (test_image, test_truth), training = data[-1], data[:-1]
    for i, (image, labels) in enumerate(training):
        write_tiff(_mkparent(out / "data" / "train" / "images" / f"{i:02d}.tif"), image, "YX")
        write_tiff(_mkparent(out / "data" / "train" / "labels" / f"{i:02d}.tif"), labels.astype(np.uint16), "YX")
    write_tiff(_mkparent(out / "data" / "test" / "images" / "test.tif"), test_image, "YX")
    write_tiff(_mkparent(out / "data" / "test" / "labels" / "test.tif"), test_truth.astype(np.uint16), "YX")

    samples = [Sample(normalize_percentile(image), labels) for image, labels in training]
    net_config, config = preset("fast", iterations=args.iterations, seed=args.seed)
    if model_dir.exists():
        if not is_model_folder(model_dir):
            raise ValueError(f"{model_dir} exists and is not a model folder; choose another --out")
        shutil.rmtree(model_dir)  # a model of an earlier demo: the new one replaces it
    import torch

    torch.manual_seed(config.seed)  # the new network's initial weights follow --seed too
    trainer = Trainer(UNet(net_config), config, samples[:-1], samples[-1:], args.device, model_dir)
    _note(f"demo: training the fast preset for {args.iterations} iterations on {len(samples) - 1} synthetic "
          f"{DEMO_SHAPE[0]}x{DEMO_SHAPE[1]} images ({_describe(trainer.device)})", args.quiet)
    result = _run_training(trainer, args.quiet)
    if result["stopped"]:
        print(f"stopped at iteration {result['iteration']}; no report written", file=sys.stderr)
        return EXIT_INTERRUPTED

    tuned = _tune_postprocess(trainer, samples[-1:])
    bundle = trainer.bundle()
    outputs = Outputs(out / "predictions" / "test_labels.tif", out / "predictions" / "test_probs.tif")
    for _ in segment_file(bundle, test_image, "YX", outputs, device=trainer.device):
        pass
    from .io import read_image

    predicted = np.asarray(read_image(outputs.labels)[0])
    scores = {**instance_scores(predicted, test_truth), **pixel_scores(predicted, test_truth)}
    _save_overlay(out / "overlay.png", test_image, predicted, test_truth)
    report = {
        "scores": scores,
        "training": {
            "preset": "fast", "iterations": result["iteration"], "seconds": round(result["elapsed"], 1),
            "device": result["device"], "seed": args.seed, "final_loss": result["loss"],
            "validation_iou": result["val_score"], "training_images": len(samples) - 1, "validation_images": 1,
            "image_shape": list(DEMO_SHAPE),
        },
        "postprocess": {**tuned["config"].to_dict(), "validation_ap50": tuned["scores"]["ap50"],
                        "validation_ap50_default": tuned["before"]["ap50"]},
        "test_image": {"cells": int(test_truth.max()), "shape": list(test_image.shape)},
        "files": {"model": "model", "overlay": "overlay.png", "labels": "predictions/test_labels.tif",
                  "probabilities": "predictions/test_probs.tif", "data": "data"},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "report.md").write_text(_demo_markdown(report, out, args))
    print(_summary(result, model_dir))
    print(_describe_tuning(tuned))
    print(f"held-out image: AP50 {scores['ap50']:.3f}, mAP {scores['map']:.3f}, SEG {scores['seg']:.3f}, "
          f"IoU {scores['iou']:.3f} ({scores['n_pred']} cells found, {scores['n_true']} true)")
    print(f"report: {out / 'report.md'} (overlay: {out / 'overlay.png'})")
    return EXIT_OK


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save_overlay(path: Path, image, predicted, truth, scale: int = 2) -> None:
    """An RGB PNG of `image` with true outlines in green, predicted ones in magenta (white where they agree)."""
    from PIL import Image
    from skimage.segmentation import find_boundaries

    lo, hi = np.percentile(image, (1, 99.8))
    grey = (np.clip((image - lo) / (hi - lo + 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    true_edges = find_boundaries(truth, mode="inner")
    pred_edges = find_boundaries(predicted, mode="inner")
    rgb[true_edges & ~pred_edges] = (0, 220, 0)
    rgb[pred_edges & ~true_edges] = (255, 0, 255)
    rgb[pred_edges & true_edges] = (255, 255, 255)
    picture = Image.fromarray(rgb)
    if scale > 1:
        picture = picture.resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    picture.save(path)


def _demo_markdown(report: dict[str, Any], out: Path, args: argparse.Namespace) -> str:
    from .postprocess import PostprocessConfig

    s, t, p = report["scores"], report["training"], report["postprocess"]
    growth = _growth(PostprocessConfig.from_dict({k: v for k, v in p.items() if not k.startswith("validation_")}))
    val = f"{t['validation_iou']:.3f}" if t["validation_iou"] is not None else "n/a"
    return f"""# napari-unet demo

Synthetic fluorescence nuclei (many touching), {t['training_images']} training images and 1 validation image of
{t['image_shape'][0]}x{t['image_shape'][1]} pixels; scored on a held-out image with {report['test_image']['cells']} cells.

Training: preset `fast`, {t['iterations']} iterations in {_duration(t['seconds'])} on {t['device']}, seed {t['seed']};
final loss {t['final_loss']:.4f}, validation foreground IoU {val}.

Post-processing, chosen on the validation image (`napari-unet train --tune-postprocess`): threshold
{p['threshold']}, watershed {'on' if p['watershed'] else 'off'}, growth to {growth}
(validation AP50 {p['validation_ap50']:.3f}; {p['validation_ap50_default']:.3f} with the default settings).

| score on the held-out image | value |
|---|---|
| AP at IoU 0.5 | {s['ap50']:.3f} |
| mean AP, IoU 0.5:0.95 | {s['map']:.3f} |
| F1 at IoU 0.5 | {s['f1_50']:.3f} |
| SEG | {s['seg']:.3f} |
| foreground IoU | {s['iou']:.3f} |
| pixel error | {s['pixel_error']:.4f} |
| cells found / true | {s['n_pred']} / {s['n_true']} |

![overlay](overlay.png)

`overlay.png`: the held-out image with the true outlines in green and the predicted ones in magenta (white where
they coincide).

The same with the command line, on the files this demo wrote:

```bash
napari-unet train {out}/data/train/images {out}/data/train/labels --out {out}/model --overwrite \\
    --iterations {args.iterations} --val-fraction 0.25 --seed {args.seed} --tune-postprocess
napari-unet predict {out}/model {out}/data/test/images --out {out}/predictions --probabilities
napari-unet evaluate {out}/predictions {out}/data/test/labels --kind instances
```
"""


# -------------------------------------------------------------------------------------------------- info


def _info(args: argparse.Namespace) -> int:
    from .modelfile import CONFIG_FILE, STATE_FILE, load_model

    bundle = load_model(args.model)
    folder = args.model if args.model.is_dir() else args.model.parent
    if args.json:
        print((folder / CONFIG_FILE).read_text())
        return EXIT_OK
    net = bundle.net
    parameters = sum(p.numel() for p in net.parameters())
    meta = dict(bundle.metadata)
    training = meta.pop("training", None)
    lines = [
        f"model: {folder}",
        f"network: {_fields(net.config.to_dict())}",
        f"  {parameters:,} parameters; halo {net.halo} px; input sizes in steps of {net.step}",
        f"normalization: percentiles {bundle.normalization.low} - {bundle.normalization.high}",
        f"post-processing: {_fields(bundle.postprocess.to_dict())}",
    ]
    if training:
        augment = training.pop("augment", None)
        lines.append(f"training: {_fields(training)}")
        if augment:
            lines.append(f"  augmentation: {_fields(augment)}")
    lines.append("metadata: " + _fields(meta))
    lines.append(f"resumable: {'yes' if (folder / STATE_FILE).is_file() else 'no (no training state)'}")
    print("\n".join(lines))
    return EXIT_OK


def _fields(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


# ------------------------------------------------------------------------------------------------- misc


def _describe(device) -> str:
    from .device import describe_device

    return describe_device(device)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-unet-2015")
    except PackageNotFoundError:
        return "unknown"
