"""`napari-unet export`: a model folder as a bioimage.io package, an ONNX file or a TorchScript file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._args import EXIT_OK, add_command, add_overwrite, add_quiet
from .progress import note, note_shadowed


def add_parser(subparsers) -> None:
    sub = add_command(
        subparsers,
        "export",
        "Export a model for other tools: bioimage.io, ONNX or TorchScript.",
        "bioimageio: a bioimage.io model package (format 0.5; a folder, or a .zip when OUT ends in .zip) with "
        "rdf.yaml, weights as pytorch_state_dict, torchscript and onnx, test tensors and a README with the "
        "citations and the training data's licence; it runs in bioimage.io consumers (deepImageJ, ilastik, "
        "bioimageio.core ...). onnx / torchscript: one file. Every export is the network with a softmax: input "
        "(N, C, H, W) float32 normalised with the model's percentiles, H and W of its rule (min + n * step, "
        "printed); probabilities out. The ONNX and TorchScript files' output is (N, classes, H - 2 halo, "
        "W - 2 halo), and they refuse other sizes; the package's output has the input's size (bioimage.io pads "
        "the image by the package's halo, mirrored, and crops it again).",
        "  napari-unet export cells.model --format bioimageio --out cells.bioimageio.zip \\\n"
        "      --author 'Ada Lovelace' --training-data-name 'my lab's HeLa cells' --training-data-licence CC-BY-4.0\n"
        "  napari-unet export cells.model --format onnx --out cells.onnx",
        run,
    )
    sub.add_argument("model", type=Path, help="model folder")
    sub.add_argument(
        "--format", choices=("bioimageio", "onnx", "torchscript"), required=True, dest="fmt", help="what to write"
    )
    sub.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="PATH",
        help="what to write: a folder or .zip (bioimageio), a .onnx file, a .pt file (torchscript; or .pth, .ts)",
    )
    add_overwrite(sub, "--out (a bioimage.io package, or a file)")
    add_quiet(sub, "no notes on stderr")
    bio = sub.add_argument_group("bioimageio package (default: what the model folder records)")
    bio.add_argument("--name", help="model name")
    bio.add_argument("--author", action="append", metavar="NAME", help="an author (repeat for several)")
    bio.add_argument("--license", default="BSD-3-Clause", metavar="SPDX", help="licence of the model")
    bio.add_argument("--training-data-name", metavar="TEXT", help="what the model was trained on")
    bio.add_argument("--training-data-licence", metavar="SPDX", help="licence of the training data")
    bio.add_argument("--training-data-url", metavar="URL", help="where the training data is")
    bio.add_argument("--training-data-citation", metavar="TEXT", help="how to cite the training data")


def run(args: argparse.Namespace) -> int:
    from ..builtin import resolve
    from ..export import (
        check_target,
        export_model,
        input_size_rule,
        package_halo,
        package_size_rule,
        recorded_training_data,
    )
    from ..modelfile import load_model
    from ..validation import check_output_free, check_writable_folder

    model_folder = resolve(args.model)  # the built-in model's folder for "nuclei"
    if model_folder.resolve() in [args.out.resolve(), *args.out.resolve().parents]:
        raise ValueError(
            f"the output {args.out} would replace the model {args.model} or a file in it: choose another --out"
        )
    check_target(args.fmt, args.out)  # first: a folder no export can replace is not offered --overwrite
    check_output_free(args.out, args.overwrite)
    check_writable_folder(args.out.parent, f"--out {args.out}")  # the package or file is made beside it, then renamed
    note_shadowed(args.model, args.quiet)
    bundle = load_model(args.model)
    options = {}
    training_data = {
        key: value
        for key, value in (
            ("name", args.training_data_name),
            ("licence", args.training_data_licence),
            ("url", args.training_data_url),
            ("citation", args.training_data_citation),
        )
        if value
    }
    if args.fmt == "bioimageio":
        recorded = recorded_training_data(bundle)
        options = {
            "name": args.name,
            "license": args.license,
            "authors": [{"name": name} for name in args.author] if args.author else None,
            "training_data": {**recorded, **training_data},
        }
    elif training_data or args.name or args.author:
        raise ValueError(
            "--name, --author and --training-data-* describe a bioimageio package; "
            "ONNX and TorchScript files hold only the network"
        )
    path = export_model(bundle, args.fmt, args.out, **options)
    channels = bundle.net.config.in_channels
    if args.fmt == "bioimageio":
        minimum, step = package_size_rule(bundle.net)
        print(
            f"{args.fmt} export -> {path}: input (N, {channels}, H, W) with H, W = {minimum} + n * {step}; output "
            f"of the input's size, whose outer {package_halo(bundle.net)} px (the declared halo) bioimage.io "
            "crops after padding the image by them, mirrored, as napari-unet predicts"
        )
    else:
        minimum, step, offset = input_size_rule(bundle.net)
        print(
            f"{args.fmt} export -> {path}: input (N, {channels}, H, W) with H, W = {minimum} + n * {step}; output "
            f"size = input size {offset:+d} (the file refuses other sizes)"
        )
    if args.fmt == "bioimageio" and not options["training_data"].get("licence"):
        note(
            "note: the training data's licence is not recorded; give --training-data-licence so that users "
            "of the package know it",
            args.quiet,
        )
    return EXIT_OK
