"""Reading the training data of `napari-unet train`: images, labels and masks paired by name, the validation
split, and the rescaling of the samples to a model's object diameter."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .progress import note, warn_unmatched


def training_data(args: argparse.Namespace):
    """(train, validation) lists of Sample, read from the files the arguments name."""
    from ..channels import ChannelChoiceError
    from ..io import reading_notes
    from ..pipeline import is_annotation, match_files, split_by_image

    match = match_files(*listed(args.images, args.labels, "image", "label", args.quiet))
    warn_unmatched(match, ("images without labels (skipped)", "labels without images (skipped)"), args.quiet)
    pairs = checked_pairs(match.pairs, args.quiet, Path(args.images).is_dir() or Path(args.labels).is_dir())
    images = [image for image, _ in pairs]  # those of IMAGES, the ones --val-fraction holds out included
    validation_pairs: list[tuple[Path, Path]] = []
    if args.validation_images is not None:
        validation = match_files(
            *listed(args.validation_images, args.validation_labels, "validation image", "validation label", args.quiet)
        )
        warn_unmatched(validation, ("validation images without labels", "validation labels without images"), args.quiet)
        folders = Path(args.validation_images).is_dir() or Path(args.validation_labels).is_dir()
        validation_pairs = checked_pairs(validation.pairs, args.quiet, folders)
    elif args.val_fraction is not None:
        pairs, validation_pairs = split_by_image(pairs, args.val_fraction, args.seed)
        note("validation images: " + ", ".join(p.name for p, _ in validation_pairs), args.quiet)
    everything = pairs + validation_pairs
    labels_files = [labels for _, labels in everything]
    own_folder = [image for image, _ in validation_pairs] if args.validation_images is not None else []
    masks = masks_for(args.mask, images, labels_files, args.quiet, own_folder)
    for image, _ in everything:  # what reading an image had to assume (axes guessed, extra series)
        for said in reading_notes(image, axes_option=None):  # train has no --axes: single planes are expected
            note(f"note: {image.name}: {said}", args.quiet)
    choice = args.channel_choice
    try:
        train = [read_sample(image, labels, masks.get(image), choice) for image, labels in pairs]
        validation_samples = [
            read_sample(image, labels, masks.get(image), choice) for image, labels in validation_pairs
        ]
    except ChannelChoiceError as error:  # say whose choice it is when it was not given (--init's, the saved run's)
        source = getattr(args, "channel_source", None)
        raise ChannelChoiceError(f"{error} ({source})" if source else str(error)) from None
    around = getattr(args, "around_cells", None)
    if around is not None:
        train, validation_samples = (
            [around_cells(s, around) for s in samples] for samples in (train, validation_samples)
        )
    elif any(is_annotation(labels) for _, labels in everything):
        note(
            "note: the labels include the napari plugin's annotations: every pixel left unpainted there is taught "
            "as background; where only some cells are painted, add --around-cells 12 (as the Fine-tune dock does)",
            args.quiet,
        )
    unannotated = [
        image.name for (image, _), sample in zip(everything, train + validation_samples) if not annotates(sample)
    ]
    if unannotated:  # never drawn for a step, nor scored (batches.annotated_samples, Trainer.validate)
        note(
            f"note: {len(unannotated)} image(s) annotate no pixel (mask or labels) and are not used: "
            + ", ".join(unannotated[:5]),
            args.quiet,
        )
    check_objects(train, args, validation_samples)
    background = [
        image.name
        for (image, _), sample in zip(everything, train + validation_samples)
        if annotates(sample) and not has_objects(sample)
    ]
    if background:  # a label file exported empty by mistake, or an image with no cell: say which
        note(
            f"note: {len(background)} image(s) have no object in their labels and teach background only: "
            + ", ".join(background[:5]),
            args.quiet,
        )
    channels = channel_counts(train + validation_samples)
    if len(channels) > 1:
        raise ValueError(f"the images have different numbers of channels {sorted(channels)}; they must agree")
    return train, validation_samples


def listed(images: Path, labels: Path, what: str, what_labels: str, quiet: bool) -> tuple[list[Path], list[Path]]:
    """The image files and label files that IMAGES and LABELS name. One folder given as both holds them side by
    side (Cellpose's `x.png` with `x_cp_masks.png`, or the napari plugin's autosaved `x.tif.unet-labels.tif`):
    `pipeline.split_beside` tells them apart."""
    from ..pipeline import list_files, split_beside

    if not (Path(images).is_dir() and Path(images).resolve() == Path(labels).resolve()):
        return list_files(images, what, annotations=False), list_files(labels, what_labels)
    image_files, label_files, others = split_beside(list_files(images, what))
    if not label_files:
        raise ValueError(
            f"{images} is given as both {what}s and {what_labels}s, but no file in it is named as a label file "
            "of another (x_labels.tif, x_masks.png or x_cp_masks.png beside x.png, or the napari plugin's "
            "x.tif.unet-labels.tif); name them so, or give the labels their own folder"
        )
    if others:
        note(
            f"note: left out {len(others)} file(s), predict's probability maps or a second label file of one image "
            "(the plugin's newest annotations are used first, then _labels, _cp_masks, _masks, _mask): "
            + ", ".join(p.name for p in others[:5]),
            quiet,
        )
    return image_files, label_files


def channel_counts(samples) -> set[int]:
    """The numbers of channels of the samples' images ((H, W): 1)."""
    return {sample.image.shape[0] if sample.image.ndim == 3 else 1 for sample in samples}


def annotates(sample) -> bool:
    """Whether a training sample has a pixel with a loss weight (annotated by its mask and labels)."""
    from ..targets import annotation_mask

    return bool(annotation_mask(sample.labels, sample.mask).any())


def has_objects(sample) -> bool:
    """Whether a training sample's labels hold an object (a nonzero id) where they are annotated."""
    from ..targets import annotation_mask

    return bool(np.any(sample.labels[annotation_mask(sample.labels, sample.mask)] != 0))


def check_objects(train, args: argparse.Namespace, validation=()) -> None:
    """Refuse training images annotated as background alone: no label file holds an object, so there is nothing
    to learn (a labels folder of empty files). Fine-tuning a saved model (--init, --resume) on sparse annotation
    (--mask, or not-annotated pixels) may teach it background alone: corrections of its false detections.
    `validation`: the validation samples, named when --val-fraction held out every image with objects."""
    from ..targets import annotation_mask

    annotated = [sample for sample in train if annotates(sample)]
    if not annotated or any(has_objects(sample) for sample in annotated):
        return  # nothing annotated at all is the trainer's error ("the annotations are empty")
    sparse = any(not annotation_mask(sample.labels, sample.mask).all() for sample in annotated)
    if sparse and (args.init is not None or args.resume):
        return
    if args.val_fraction is not None and any(annotates(s) and has_objects(s) for s in validation):
        raise ValueError(
            f"the training images hold no object: every image whose labels in {args.labels} hold one was held out "
            f"for validation by --val-fraction {args.val_fraction:g} (with --seed {args.seed}); choose another "
            "--seed, or give validation images with --validation-images and --validation-labels"
        )
    raise ValueError(
        f"the labels in {args.labels} hold no object: every annotated pixel is 0 (background), so there is nothing "
        "to learn; expected instance ids (one per cell, 0 = background) or a mask (cells > 0)"
    )


def checked_pairs(pairs: list[tuple[Path, Path]], quiet: bool, folders: bool = True) -> list[tuple[Path, Path]]:
    """`pairs` of (image, labels), refused when a file would be its own labels (IMAGES and LABELS the same
    folder of images); a note when the only files of `folders` were paired although their names differ (two
    files given as such pair whatever their names, as documented)."""
    from ..pipeline import base_name

    for image, labels in pairs:
        if image.resolve() == labels.resolve():
            raise ValueError(
                f"{image} would be its own labels: IMAGES and LABELS must be different files (labels pair with "
                "their images by name: 01.png with 01.tif, or 01_labels.tif)"
            )
    if folders and len(pairs) == 1 and base_name(pairs[0][0]) != base_name(pairs[0][1]):
        note(
            f"note: paired {pairs[0][0].name} with {pairs[0][1].name}, the only files, although their names differ",
            quiet,
        )
    return pairs


def masks_for(
    path: Path | None, images: list[Path], labels: list[Path], quiet: bool, own_folder: Sequence[Path] = ()
) -> dict[Path, Path]:
    """{image: its mask} for the images that have one in `path` (None: no masks). images: those of IMAGES (the
    training images and those --val-fraction holds out), paired with the masks together; a single mask file
    applies to a single image. own_folder: the --validation-images, paired with the masks by name on their own
    (the same names may recur among `images`). labels: every label file of the run (none may serve as a mask).
    Notes name the images without a mask and the masks that match no image of either."""
    from ..pipeline import list_files, match_files

    if path is None or not (images or own_folder):
        return {}
    masks = list_files(path, "mask")
    if len(masks) == 1 and len(images) > 1 and path.is_file():
        raise ValueError(f"--mask {path} is one file but there are {len(images)} images: give a folder of masks")
    pairs, unmasked, used, refusal = [], [], set(), None
    for group, by_name in ((images, False), ([] if path.is_file() else list(own_folder), True)):
        if not group:
            continue
        try:
            match = match_files(group, masks, ("images", "masks"), by_name=by_name)
        except ValueError as error:  # no image of this group has a mask: the other group's may
            refusal, unmasked = refusal or error, unmasked + list(group)
            continue
        pairs += match.pairs
        unmasked += match.unmatched_first
        used.update(mask for _, mask in match.pairs)
    if not pairs and refusal is not None:
        raise refusal
    taken = {label.resolve() for label in labels}
    for image, mask in pairs:
        if mask.resolve() in taken:
            raise ValueError(
                f"{mask} would be both labels and the mask of {image.name}: give --mask a folder of masks only"
            )
    if unmasked:
        note(
            f"note: {len(unmasked)} image(s) have no mask and count as annotated everywhere: "
            + ", ".join(p.name for p in unmasked[:5]),
            quiet,
        )
    unused = [mask for mask in masks if mask not in used]
    if unused:
        note(f"note: {len(unused)} mask(s) match no image (skipped): " + ", ".join(p.name for p in unused[:5]), quiet)
    return dict(pairs)


def around_cells(sample, margin: float):
    """`sample` annotated only at its annotated cells and `margin` pixels of background around them (within its
    own mask, if any): elsewhere, unpainted cells are not taught as background (`targets.mask_around_cells`)."""
    from dataclasses import replace

    from ..targets import mask_around_cells

    region = mask_around_cells(sample.labels, margin)
    if sample.mask is not None:
        region &= np.asarray(sample.mask) != 0
    return replace(sample, mask=region)


def read_sample(image_path: Path, labels_path: Path, mask_path: Path | None = None, channels=None):
    from ..pipeline import read_training_pair
    from ..training import Sample

    return Sample(*read_training_pair(image_path, labels_path, mask_path, channels=channels))


def to_model_scale(train, validation, object_diameter: float | None, quiet: bool):
    """The samples rescaled so their annotated cells have the model's object diameter (unchanged without one)."""
    from ..scale import rescale_to_diameter

    if object_diameter is None:
        return train, validation
    train, factors = rescale_to_diameter(train, object_diameter)
    validation, more = rescale_to_diameter(validation, object_diameter) if validation else ([], [])
    factors += more
    note(
        f"images rescaled by x{min(factors):.3g} to x{max(factors):.3g} so their cells are {object_diameter:g} px "
        "across, the model's object diameter",
        quiet,
    )
    return train, validation
