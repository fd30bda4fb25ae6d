"""`napari-unet train`: read annotated images, train (or fine-tune, or resume) a U-Net, save the model folder.

With --gpus N, N processes train together (`ddp.py`); a run started by torchrun joins its process group.
One run at a time writes a model folder: a second one started with the same --out is refused (`output_lock`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._args import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_channel_options,
    add_command,
    add_device,
    add_precision,
    add_quiet,
    channel_choice_option,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from ._train_data import channel_counts, to_model_scale, training_data
from ._training import describe_tuning, settings, summary, train_with_progress, tune_on_validation
from .progress import describe, note, note_shadowed


def add_parser(subparsers) -> None:
    sub = add_command(
        subparsers,
        "train",
        "Train a U-Net on annotated images and save it as a model folder.",
        "IMAGES and LABELS are folders whose files pair by base name (01.png with 01.tif; a '_labels' suffix is "
        "tolerated) or two single files; one folder given as both holds images and labels side by side (01.png "
        "with 01_masks.png, 01_cp_masks.png or 01_labels.tif, or the plugin's 01.png.unet-labels.tif). Labels: instance ids (0 = background, one id per cell) or a binary "
        "mask (e.g. ISBI: 0 = membrane, 255 = cell). Sparse annotation: --mask (nonzero = annotated), or the "
        "reserved value -1 (int) / 65535 (uint16) in the label files. Images are normalised with their 1st and "
        "99.8th percentiles. The model folder is written at every checkpoint, at the end, and when stopped "
        "with Ctrl-C or SIGTERM (after at least one step); continue a stopped run with --resume. With "
        "--overwrite an existing model stays until the new run has saved one. A second run with the same --out "
        "is refused while the first one runs.",
        "  napari-unet train data/images data/labels --out cells.model --val-fraction 0.2\n"
        "  napari-unet train new/images new/labels --out tuned.model --init nuclei --iterations 200\n"
        "  napari-unet train data/images data/labels --out cells.model --resume --iterations 800",
        run,
    )
    sub.add_argument("images", type=Path, help="image file or folder")
    sub.add_argument("labels", type=Path, help="label file or folder (matched to the images by base name)")
    sub.add_argument("--out", type=Path, required=True, metavar="MODEL", help="model folder to write")
    start = sub.add_argument_group("what to start from")
    start.add_argument(
        "--preset",
        choices=("fast", "paper"),
        help="fast (default): small net for a CPU; paper: the 2015 network and SGD schedule",
    )
    start.add_argument(
        "--init",
        metavar="MODEL",
        help="fine-tune a saved model (folder, or built-in name such as nuclei) instead of a new net; "
        "a model with an object diameter gets each image rescaled so its cells have that diameter",
    )
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out exactly where it stopped (the saved run's settings may be given "
        "again; only --iterations, --time-budget, --learning-rate, --precision, --augmentation and --compile may "
        "change)",
    )
    start.add_argument("--overwrite", action="store_true", help="replace an existing model folder at --out")
    start.add_argument(
        "--depth", type=positive_int, metavar="N", help="new net: resolution levels (preset's by default)"
    )
    start.add_argument("--base-channels", type=positive_int, metavar="N", help="new net: features at the first level")
    data = sub.add_argument_group("data")
    data.add_argument(
        "--mask",
        type=Path,
        metavar="PATH",
        help="mask file or folder (nonzero = annotated), matched to the images by base name",
    )
    data.add_argument(
        "--around-cells",
        type=positive_float,
        metavar="PX",
        help="only some cells are annotated (the napari plugin's annotations): the loss looks at the annotated "
        "cells and PX pixels of background around them, as the Fine-tune dock does (12 there), not at the rest",
    )
    add_channel_options(data, "the network sees (default: all; with --init/--resume: the saved model's)")
    data.add_argument("--validation-images", type=Path, metavar="PATH", help="validation image file or folder")
    data.add_argument("--validation-labels", type=Path, metavar="PATH", help="validation label file or folder")
    data.add_argument(
        "--val-fraction",
        type=fraction,
        metavar="F",
        help="hold out this fraction of the images (whole images, chosen with --seed) for validation",
    )
    training = sub.add_argument_group("training (preset's values by default)")
    training.add_argument("--iterations", type=positive_int, metavar="N", help="training steps in all")
    training.add_argument(
        "--time-budget",
        type=positive_float,
        metavar="SECONDS",
        help="train this long, validations and checkpoints included (then save); without --iterations the run "
        "takes as many steps as fit, with its learning-rate schedule spread over the seconds",
    )
    training.add_argument("--seed", type=int, help="random seed (sampling, augmentation, split; default 0)")
    training.add_argument(
        "--tile-size",
        type=positive_int,
        metavar="N",
        help="side of the network's input window (rounded up to a valid size)",
    )
    training.add_argument("--batch-size", type=positive_int, metavar="N", help="windows per step")
    training.add_argument(
        "--learning-rate",
        type=positive_float,
        metavar="LR",
        help="optimiser step size; with --resume, the saved run's schedule goes on at this rate (after a divergence)",
    )
    training.add_argument("--w0", type=non_negative_float, metavar="W", help="weight of the border term between cells")
    training.add_argument("--sigma", type=positive_float, metavar="PX", help="width (px) of the border term")
    training.add_argument(
        "--class-weights",
        choices=("balanced", "none"),
        help="balanced: even out the classes' pixel counts (the paper); none: every pixel alike "
        "(default: chosen from the labels, see docs/cli.md)",
    )
    training.add_argument(
        "--border",
        type=non_negative_int,
        metavar="PX",
        help="background border (px) cut between touching cells in the target (0: none, the watershed parts them)",
    )
    training.add_argument(
        "--tune-postprocess",
        action="store_true",
        help="after training, choose the threshold, watershed, seeds and growth settings that give "
        "the best mAP (then AP50) on the validation images (instance labels; a flooding membrane model: the flood's "
        "seed threshold by V_rand) and save them with the model",
    )
    speed = sub.add_argument_group("speed (the same training, faster)")
    add_precision(speed, default=None)
    speed.add_argument(
        "--augmentation",
        choices=("auto", "per-sample", "batched"),
        help="batched: warp a whole batch at once on the training device; auto: batched on a GPU and with "
        "--gpus, per-sample on the CPU (both draw the same random numbers)",
    )
    speed.add_argument("--compile", action="store_true", help="run the network through torch.compile")
    speed.add_argument(
        "--gpus",
        type=positive_int,
        default=1,
        metavar="N",
        help="train on N GPUs of this machine, one process each, each taking --batch-size windows a step "
        "(DDP; with --device cpu: N CPU processes); or start this command with torchrun",
    )
    add_device(sub)
    add_quiet(sub)
    sub.set_defaults(out_locked=False)  # set for the processes --gpus starts: the one that started them holds --out


def run(args: argparse.Namespace) -> int:
    from .. import ddp

    if args.out.is_symlink():  # a link to a model folder: the folder is written (a save would replace the link)
        args.out = Path(os.path.realpath(args.out))
    if ddp.launched_by_torchrun():  # one of several processes: train together, the first one reports
        args.device = ddp.init_from_torchrun(args.device)
        rank = ddp.rank_and_world_size()[0]
        args.quiet = args.quiet or rank != 0
        if rank != 0 or args.out_locked:  # the first process holds --out for all (or the one that started them)
            return _train(args)
    elif args.gpus > 1:
        with output_lock(args.out):
            args.out_locked = True
            return _spawn(args)
    with output_lock(args.out):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from .. import ddp
    from ..training import TrainingDiverged

    out = args.out
    first = ddp.rank_and_world_size()[0] == 0  # with several processes, the first one reports
    _check_options(args)
    args.channel_choice = _channel_choice(args)
    train, validation = training_data(args)
    trainer = _make_trainer(args, train, validation)
    if args.resume and trainer.finished:
        if first:
            print(_already_complete(trainer, out, args.tune_postprocess))
            if args.tune_postprocess:  # asked of the finished run: its post-processing is chosen and saved now
                _report_tuning(trainer)
        return EXIT_OK
    if trainer.postprocess.flood:
        note(
            f"the cells tile the image (membranes): predict floods them from seeds above a probability "
            f"({trainer.postprocess.threshold:g} until it is fitted on the training masks at the end) until they "
            "meet (predict --no-flood turns it off)",
            args.quiet,
        )
    note(
        f"training on {len(train)} image(s), validating on {len(validation)}; device: {describe(trainer.device)}",
        args.quiet,
    )
    try:
        result = train_with_progress(trainer, args.quiet)
    except TrainingDiverged as error:
        if not first:
            return EXIT_FAILED
        hint = ""
        if error.kept is not None:
            hint = (
                f" Continue from it at a tenth of the rate: {_resume_command(args, out)} "
                f"--learning-rate {trainer.config.learning_rate / 10:g}"
            )
        print(f"napari-unet: error: {error}{hint}", file=sys.stderr)
        return EXIT_FAILED
    if result["stopped"]:
        if first and result["iteration"] > result["started_at"]:
            print(
                f"stopped at iteration {result['iteration']}; the model is saved in {out} "
                f"(continue with: {_resume_command(args, out)}; the saved run's other "
                "settings are kept, only --iterations, --time-budget, --learning-rate and speed options may change)",
                file=sys.stderr,
            )
        elif first:
            print(f"stopped before the first step; nothing was saved ({out} is as it was)", file=sys.stderr)
        return result["exit_code"]
    if not first:
        return EXIT_OK
    print(summary(result, out))
    fitted = trainer.growth_calibration
    if fitted and fitted["by"] == "vrand":
        print(
            f"flood seeds fitted on {fitted['images']} training mask(s): above {fitted['chosen']:g} "
            f"(thinned V_rand there {fitted['vrand'][str(fitted['chosen'])]:.3f}); saved with the model"
        )
    elif fitted:  # the model's post-processing was fitted on its training images: say so, it changes what predict does
        print(
            f"post-processing fitted on {fitted['images']} training image(s): {settings(trainer.postprocess)}; "
            "saved with the model (--tune-postprocess chooses it on validation images instead)"
        )
    if args.tune_postprocess:
        _report_tuning(trainer)
    return EXIT_OK


def _report_tuning(trainer) -> None:
    """--tune-postprocess: choose the post-processing on the validation images, save it, and say so."""
    tuned = tune_on_validation(trainer)
    print(
        describe_tuning(tuned)
        if tuned
        else "post-processing not tuned: no validation image annotated everywhere "
        + ("with a membrane mask" if trainer.postprocess.flood else "with instance labels")
    )


def _already_complete(trainer, out: Path, tuning: bool = False) -> str:
    """What resuming a run that had ended says: where it ended, and how to train on (`tuning`: its weights are
    unchanged, its post-processing is about to be tuned)."""
    import math

    loss = f", loss {trainer.last_loss:.4f}" if math.isfinite(trainer.last_loss) else ""  # saved by older runs
    if trainer.iteration >= trainer.config.iterations:
        more = f"to train on, give --iterations above {trainer.iteration}"
    else:
        more = f"its time budget of {trainer.config.time_budget:g} s is spent; to train on, give a larger one"
    done = f"{trainer.iteration} iterations{loss}"
    unchanged = "its weights are unchanged" if tuning else "the model is unchanged"
    return f"the run saved in {out} is already complete ({done}); {unchanged} ({more})"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an advisory lock on the model folder `out` while this run writes it: a second run with the same
    --out is refused at its start (a ValueError naming the folder), not left to overwrite the first one's
    checkpoints.

    The lock is `flock` on ``.<name>.lock`` beside the folder (the folder itself is replaced at every save). The
    kernel releases it when the process ends, however (kill -9 included): a lock file left behind by a killed
    run locks nothing, and the next run takes it over. The file is removed at the end of a run, and by a second
    Ctrl-C or SIGTERM before it exits at once (`_signals`). Without `fcntl` (Windows) or on a file system that
    has no locks, runs are not locked.
    """
    from ..validation import check_writable_folder
    from ._signals import current

    folder = Path(os.path.abspath(out))
    check_writable_folder(folder.parent, f"--out {out}")  # the lock file goes there
    path = folder.parent / f".{folder.name}.lock"
    handle = _take_lock(path, out)
    if handle is None:
        yield
        return

    def remove() -> None:  # while still locked: a run that opened it meanwhile sees it gone and makes a new one
        path.unlink(missing_ok=True)

    try:
        with current().before_exit(remove):
            yield
    finally:
        try:
            remove()
        except OSError:
            pass
        os.close(handle)


def _take_lock(path: Path, out: Path) -> int | None:
    """The open, locked lock file `path` of `output_lock`; None where files cannot be locked."""
    try:
        import fcntl
    except ImportError:
        return None
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise ValueError(
                f"--out {out}: another training run{_lock_holder(path)} is writing this model folder; wait for it "
                "to end, or choose another --out"
            ) from None
        except OSError:  # no locks on this file system (some network drives)
            os.close(handle)
            return None
        try:  # taken; but the file may have been removed, and another made, by a run that ended meanwhile
            current = os.path.samestat(os.fstat(handle), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(handle, 0)
            os.write(handle, f"{os.getpid()}\n".encode())
            return handle
        os.close(handle)


def _lock_holder(path: Path) -> str:
    """' (process N)', N read from a held lock file; '' when it says nothing (yet)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return ""
    return f" (process {text})" if text.isdigit() else ""


def _check_options(args: argparse.Namespace) -> None:
    from ..device import select_device
    from ..modelfile import STATE_FILE, load_model, recover_interrupted_save
    from ..modelfolder import check_save_target, is_model_folder
    from ..validation import check_output_not_input, check_writable_folder

    select_device(args.device)  # a device that is not here fails now, not after reading the data
    recover_interrupted_save(args.out)  # a model whose save was killed is a model: --overwrite or --resume

    inputs = {
        "IMAGES": args.images,
        "LABELS": args.labels,
        "--mask": args.mask,
        "--init": _model_folder(args.init) if args.init is not None else None,
        "--validation-images": args.validation_images,
        "--validation-labels": args.validation_labels,
    }
    check_output_not_input([args.out], [p for p in inputs.values() if p is not None])
    check_writable_folder(args.out.parent, f"--out {args.out}")  # now, not after training

    if (args.validation_images is None) != (args.validation_labels is None):
        raise ValueError("give both --validation-images and --validation-labels, or neither")
    if args.validation_images is not None and args.val_fraction is not None:
        raise ValueError("give either validation files or --val-fraction, not both")
    new_net = {"--depth": args.depth, "--base-channels": args.base_channels}
    if args.resume:
        if not is_model_folder(args.out):
            raise ValueError(f"--resume: {args.out} is not a model folder saved by 'napari-unet train'")
        if not (args.out / STATE_FILE).is_file():
            raise ValueError(
                f"--resume: {args.out} holds a model but no training state ({STATE_FILE}), so it cannot be "
                f"continued; fine-tune it with --init {args.out} and a new --out"
            )
        saved = load_model(args.out)
        changed = _changed_on_resume(args, saved)
        if changed:
            raise ValueError(
                f"--resume continues the saved run as it was; {', '.join(changed)} cannot change "
                "(only --iterations, --time-budget, --learning-rate and the speed options --precision, "
                "--augmentation and --compile can)"
            )
        args.seed = int(saved.metadata.get("seed", 0))  # the same validation split as before
        if args.around_cells is None:  # the saved run's annotated region (None: the whole images)
            args.around_cells = saved.metadata.get("around_cells")
        if args.val_fraction is None and args.validation_images is None:  # the saved run's split, if it had one
            args.val_fraction = saved.metadata.get("val_fraction")
        _check_tuning(args)
        return
    _check_tuning(args)
    if args.seed is None:
        args.seed = 0
    if args.init is not None and any(v is not None for v in new_net.values()):
        raise ValueError("--depth and --base-channels describe a new net; with --init the saved net is used")
    if check_save_target(args.out, f"--out {args.out}") and not args.overwrite:
        raise ValueError(f"{args.out} already holds a model: continue it with --resume, or replace it with --overwrite")


def _model_folder(model: str) -> Path:
    """The folder of a model given as `load_model` takes it: the folder, or its config.json or weights file."""
    from ..modelfolder import CONFIG_FILE, WEIGHTS_FILE

    path = Path(model)
    return path.parent if path.name in (CONFIG_FILE, WEIGHTS_FILE) and path.is_file() else path


def _check_tuning(args: argparse.Namespace) -> None:
    if args.tune_postprocess and args.validation_images is None and args.val_fraction is None:
        raise ValueError("--tune-postprocess needs validation images (--val-fraction or --validation-images)")


def _changed_on_resume(args: argparse.Namespace, saved) -> list[str]:
    """The options given with --resume that differ from the saved run's settings (`saved`: its ModelBundle),
    each with the saved value: "--seed 5 (saved run: 1)". An option given with the saved run's value is not one.
    A setting the saved run does not record (--preset and --init before they were saved) cannot be compared."""
    from ..train_config import TrainConfig

    try:
        trained: dict[str, Any] = TrainConfig.from_dict(saved.metadata["training"]).to_dict()
    except (KeyError, TypeError, ValueError, AttributeError):  # `Trainer.resume` says what is wrong with it
        trained = {}
    net = saved.net.config
    options = {  # option: (given, saved)
        "--preset": (args.preset, saved.metadata.get("preset")),
        "--init": (args.init, saved.metadata.get("init")),
        "--seed": (args.seed, saved.metadata.get("seed")),
        "--depth": (args.depth, net.depth),
        "--base-channels": (args.base_channels, net.base_channels),
        "--tile-size": (args.tile_size, trained.get("tile_size")),
        "--batch-size": (args.batch_size, trained.get("batch_size")),
        "--w0": (args.w0, trained.get("w0")),
        "--sigma": (args.sigma, trained.get("sigma")),
        "--border": (args.border, trained.get("border")),
        "--class-weights": (args.class_weights, trained.get("class_weights")),
    }
    for name in ("around_cells", "val_fraction"):  # recorded since December 2026 (None: not given)
        if name in saved.metadata:
            options[f"--{name.replace('_', '-')}"] = (getattr(args, name), saved.metadata[name] or "not given")
    changed = [
        f"{name} {_shown(given)} (saved run: {'not recorded' if was is None else _shown(was)})"
        for name, (given, was) in options.items()
        if given is not None and given != was
    ]
    channels = channel_choice_option(args)
    if channels is not None and channels != saved.channels:
        changed.append(f"--channels/--grey {_channels(channels)} (saved run: {_channels(saved.channels)})")
    return changed


def _shown(value: object) -> str:
    """An option's value as typed: 0.5, 12 (not 12.0), "balanced"."""
    return format(value, "g") if isinstance(value, float) else str(value)


def _channels(choice) -> str:
    """A channel choice as --channels/--grey would give it: "0,2", "all grey"."""
    channels = "all" if choice.channels is None else ",".join(map(str, choice.channels))
    return f"{channels} grey" if choice.grey else channels


def _channel_choice(args: argparse.Namespace):
    """The channel choice of this run: --channels/--grey, else the saved model's (--init, --resume), else all."""
    from ..modelfile import load_model

    given = channel_choice_option(args)
    if args.resume:  # --channels/--grey, if given, are the saved run's (`_changed_on_resume`)
        args.channel_source = f"the channel choice of the run saved in {args.out}"
        return load_model(args.out).channels
    if given is not None:
        return given
    if args.init is None:
        return None
    args.channel_source = f"the channel choice of --init {args.init}; --channels or --grey choose others"
    return load_model(args.init).channels


def _make_trainer(args: argparse.Namespace, train, validation):
    from dataclasses import replace

    from .._config import with_overrides
    from ..model import UNet
    from ..modelfile import load_model
    from ..train_config import (
        UNTIL_BUDGET,
        TrainConfig,
        for_time_budget,
        hash_sample,
        settings_for_labels,
        target_settings,
    )
    from ..training import Trainer, preset

    held_out = [hash_sample(sample) for sample in validation]  # as read, before any rescaling
    if args.resume:
        overrides = {
            "iterations": args.iterations,
            "time_budget": args.time_budget,
            "precision": args.precision,
            "augmentation": args.augmentation,
            "compile": args.compile or None,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if args.time_budget is not None and args.iterations is None:  # the budget (in all) ends the run, not the
            overrides["iterations"] = UNTIL_BUDGET  # saved run's steps
        if args.learning_rate is not None:
            overrides["learning_rate"] = args.learning_rate
        saved_bundle = load_model(args.out)
        _check_channels(train, saved_bundle, None)
        _check_held_out(args, saved_bundle.metadata, train)
        saved = saved_bundle.metadata.get("data_hashes")
        train, validation = to_model_scale(train, validation, saved_bundle.object_diameter, args.quiet)
        trainer = Trainer.resume(args.out, train, validation, device=args.device, **overrides)
        trainer.metadata["validation_hashes"] = held_out  # the saved run's other records are kept (`resume`)
        processes = saved_bundle.metadata.get("processes")  # None: saved before it was recorded
        if processes is not None and processes != trainer.world_size and not trainer.finished:
            batch = trainer.config.batch_size
            note(
                f"note: the saved run trained with {processes} process(es), this one with {trainer.world_size}: a "
                f"step now takes {trainer.world_size} x {batch} windows instead of {processes} x {batch} (--gpus "
                f"{processes} keeps the saved run's)",
                args.quiet,
            )
        if saved is not None and sorted(saved) != sorted(trainer.data_hashes):
            note("note: the training images differ from those of the saved run", args.quiet)
        was = TrainConfig.from_dict(saved_bundle.metadata["training"]).learning_rate  # valid: resumed from it
        if args.learning_rate is not None and was != args.learning_rate and not trainer.finished:
            note(
                f"note: the learning rate changes from {was:g} to {args.learning_rate:g} (the saved run's schedule "
                f"goes on at the new rate from iteration {trainer.iteration})",
                args.quiet,
            )
        return trainer
    net_config, config = preset(args.preset or "fast")
    bundle = None
    if args.init is not None:
        bundle = load_model(args.init)
        note_shadowed(args.init, args.quiet)
        _check_channels(train, bundle, args.init, channel_choice_option(args) is not None)
        config = replace(config, **target_settings(bundle.metadata))
    config = with_overrides(
        config,
        iterations=args.iterations,
        time_budget=args.time_budget,
        seed=args.seed,
        tile_size=args.tile_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        w0=args.w0,
        sigma=args.sigma,
        border=args.border,
        class_weights=args.class_weights,
        precision=args.precision,
        augmentation=args.augmentation,
        compile=args.compile or None,
    )
    if args.time_budget is not None and args.iterations is None:
        config = for_time_budget(config, args.time_budget)  # the budget, not the preset's steps, ends the run
    given = [name for name in ("w0", "sigma", "border", "class_weights") if getattr(args, name) is not None]
    config, kind = settings_for_labels(config, [sample.labels for sample in train], given)
    if kind == "binary":
        note(
            f"the labels are binary masks: class weights {config.class_weights}, w0 {config.w0:g} "
            "(--class-weights and --w0 change them)",
            args.quiet,
        )
    if bundle is not None:
        postprocess = bundle.postprocess
        if args.border is not None:
            postprocess = replace(
                postprocess, border_width=config.border, watershed=postprocess.watershed or not config.border
            )
        train, validation = to_model_scale(train, validation, bundle.object_diameter, args.quiet)
        trainer = Trainer(
            bundle.net,
            config,
            train,
            validation,
            args.device,
            args.out,
            bundle.normalization,
            postprocess,
            args.channel_choice,
            bundle.object_diameter,
        )
    else:
        channels = train[0].image.shape[0] if train[0].image.ndim == 3 else 1
        net_config = with_overrides(
            net_config, in_channels=channels, depth=args.depth, base_channels=args.base_channels
        )
        import torch

        torch.manual_seed(config.seed)  # the new network's initial weights follow --seed too
        trainer = Trainer(
            UNet(net_config), config, train, validation, args.device, args.out, channels=args.channel_choice
        )
    # what --resume compares a repeated --preset, --init, --around-cells or --val-fraction with
    # (`_changed_on_resume`), the annotated region and split a --resume without them trains on again, and the
    # validation images it must not train on (`_check_held_out`)
    trainer.metadata.update(
        preset=args.preset or "fast",
        around_cells=args.around_cells,
        val_fraction=args.val_fraction,
        validation_hashes=held_out,
        **({"init": args.init} if args.init is not None else {}),
    )
    return trainer


def _check_held_out(args: argparse.Namespace, saved: dict[str, Any], train) -> None:
    """Refuse to --resume a run on training images that were its validation images (a --val-fraction or
    --validation-images given differently): its validation scores would no longer be of unseen images."""
    from ..train_config import hash_sample

    held_out = set(saved.get("validation_hashes") or ())
    leaked = sum(hash_sample(sample) in held_out for sample in train)
    if leaked:
        fraction = saved.get("val_fraction")
        same = f"--val-fraction {fraction:g}" if fraction else "the same --validation-images and --validation-labels"
        raise ValueError(
            f"--resume: {leaked} of the training images were validation images of the saved run, which would then "
            f"be trained on: give {same} as it had"
        )


def _resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command that continues this run: its own data (images, labels, mask, validation images or fraction
    with its seed) and --gpus, quoted for a POSIX shell.

    >>> _resume_command(argparse.Namespace(images=Path("my data/im"), labels=Path("lab"), mask=None), Path("m"))
    "napari-unet train 'my data/im' lab --out m --resume"
    """
    import shlex

    words: list[object] = [args.images, args.labels]
    gpus = getattr(args, "gpus", 1)
    for flag, value in (
        ("--mask", getattr(args, "mask", None)),
        ("--around-cells", getattr(args, "around_cells", None)),
        ("--validation-images", getattr(args, "validation_images", None)),
        ("--validation-labels", getattr(args, "validation_labels", None)),
        ("--val-fraction", getattr(args, "val_fraction", None)),
        ("--seed", getattr(args, "seed", None) if getattr(args, "val_fraction", None) is not None else None),
        ("--gpus", gpus if gpus > 1 else None),
    ):
        if value is not None:
            words += [flag, f"{value:g}" if isinstance(value, float) else value]
    return " ".join(["napari-unet train", *(shlex.quote(str(w)) for w in [*words, "--out", out]), "--resume"])


def _check_channels(train, bundle, init: str | None, chosen: bool = False) -> None:
    """Refuse images whose number of channels is not the one the saved network takes (`init`: the --init
    model, None: the resumed run), saying what to do: with --init, choose channels when the images have more
    (other channels when --channels/--grey, `chosen`, picked the wrong number), else use other images or train
    a new model; a resumed run needs the images it was trained on."""
    found = channel_counts(train)
    needed = bundle.net.config.in_channels
    if found == {needed}:
        return
    if init is None:
        model, hint = "the run saved in --out", f"give images with {needed} channel(s), as the run was trained on"
    elif chosen:
        model, hint = (
            f"--init {init}",
            (
                f"--channels/--grey give {', '.join(map(str, sorted(found)))} channel(s): pick {needed}, or leave them out "
                f"(the model's own choice is then used: {bundle.channels.describe()})"
            ),
        )
    elif max(found) > needed:
        model, hint = f"--init {init}", "choose channels with --channels LIST or --grey"
    else:
        model, hint = f"--init {init}", f"give images with {needed} channels, or train a new model (without --init)"
    raise ValueError(
        f"the images give {', '.join(map(str, sorted(found)))} channel(s) but {model} takes "
        f"{bundle.describe_input()}: {hint}"
    )


def _spawn(args: argparse.Namespace) -> int:
    """Run this command in `args.gpus` processes that train together (as torchrun would start them).

    A signal to this process (SIGINT, SIGTERM) is passed on to them: they stop after the same step, the first one
    saves it, and this process waits for them, holding --out, before it returns 128 + the signal's number. A
    second signal ends them (SIGKILL) and this process at once. A signal they receive themselves as well (Ctrl-C
    reaches the whole process group, a cluster's scheduler all of its processes) counts once (`_process`).
    """
    import signal
    import socket

    import torch.multiprocessing as mp

    from ._signals import current

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    guard, started = current(), []

    def end_them() -> None:
        for process in started:
            process.kill()
        for process in started:
            process.join(5)

    with guard.before_exit(end_them):
        with guard.deferred():  # a signal while they start is passed on when they have
            context = mp.start_processes(
                _process, args=(args, port), nprocs=args.gpus, join=False, start_method="spawn"
            )
        started += context.processes
        try:
            if guard.received is None:
                while not context.join():
                    pass
                return EXIT_OK
        except mp.ProcessExitedException as error:
            return error.exit_code if error.exit_code > 0 else EXIT_FAILED
        except mp.ProcessRaisedException as error:
            print(f"napari-unet: error in a training process: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:  # `_signals.Interrupted`: SIGINT or SIGTERM
            pass
        signum = guard.received or signal.SIGINT
        for process in started:
            if process.is_alive():
                os.kill(process.pid, signum)
        for process in started:
            process.join()
        return 128 + signum


def _process(rank: int, args: argparse.Namespace, port: int) -> None:
    """One of the processes `_spawn` starts: this command as torchrun would run it, with the signal handling of
    `main`, except that a repeated signal is ignored (`_spawn` passes on what it receives, and ends this process
    at once on a second signal)."""
    from . import _signals

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.gpus)
    )
    with _signals.installed(repeats_ignored=True):
        try:
            code = run(args)
        except KeyboardInterrupt as interrupt:  # before the first step: nothing to save
            if rank == 0:
                print("napari-unet: interrupted", file=sys.stderr)
            code = getattr(interrupt, "exit_code", EXIT_INTERRUPTED)
    if code:
        sys.exit(code)
