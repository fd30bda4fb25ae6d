"""Share a model with other tools: a bioimage.io package (format 0.5), ONNX or TorchScript.

Every export holds the network followed by a softmax over the classes: input ``(N, in_channels, H, W)``
float32, normalised as the model was trained (percentiles per channel and image, see ``Normalization``),
output ``(N, num_classes, H - 2 halo, W - 2 halo)`` class probabilities. H and W must be valid input sizes
of the network, ``min + n * step``, both derived from the network as ``halo`` is (:func:`input_size_rule`).

The bioimage.io package is a folder (or ``.zip``) with ``rdf.yaml``, the weights as ``pytorch_state_dict``
(architecture ``napari_unet.export:ProbabilityUNet``), ``torchscript`` and ``onnx``, test tensors computed
with the exported network, and a ``README.md`` with the citations and the training data's licence.

>>> from napari_unet.model import UNet
>>> input_size_rule(UNet(depth=2, base_channels=4))  # (min, step, offset removed from the input's size)
(18, 2, -16)
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import string
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .io import (
    PILLOW_SUFFIXES,
    TIFF_SUFFIXES,
    atomic_write,
    default_mode,
    recover_replaced_folder,
    remove_stale_temporaries,
    replace_folder,
    temporary_sibling,
)
from .model import UNet, UNetConfig

FORMATS = ("bioimageio", "onnx", "torchscript")
FILE_SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts")}  # the first is the one suggested
FORMAT_NAMES = {"onnx": "an ONNX", "torchscript": "a TorchScript"}
EXPORT_EXTRA = "export"
ONNX_OPSET = 17
BIOIMAGEIO_FORMAT_VERSION = "0.5.4"
INPUT_ID, OUTPUT_ID = "raw", "probabilities"
PAPER_CITATION = {
    "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
    "MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
TOOL_URL = "https://github.com/napari-unet/napari-unet-2015"


class ProbabilityUNet(nn.Module):
    """A :class:`UNet` followed by a softmax over the classes: x (N, C, H, W) -> probabilities (N, K, H', W').

    Built from the UNet's configuration as keyword arguments, as a bioimage.io architecture is. mirror: pixels
    of mirrored ("reflect") border added on every side of the input first: with the network's halo, the output
    has the input's size and equals napari-unet's own prediction of the image (its overlap-tile pads the same
    way), as the bioimage.io package has it; 0: the valid network's output, 2 halo smaller.
    """

    def __init__(self, mirror: int = 0, **config: Any):
        super().__init__()
        self.mirror = int(mirror)
        self.net = UNet(UNetConfig.from_dict(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mirror:
            x = nn.functional.pad(x, (self.mirror,) * 4, mode="reflect")
        return torch.softmax(self.net(x), dim=1)


def probability_net(net: UNet, mirrored: bool = False) -> ProbabilityUNet:
    """A :class:`ProbabilityUNet` on CPU, in eval mode, with a copy of ``net``'s weights (``mirrored``: the
    input's border mirrored by the halo first, as in the bioimage.io package)."""
    wrapped = ProbabilityUNet(mirror=net.halo if mirrored else 0, **net.config.to_dict())
    wrapped.net.load_state_dict({k: v.detach().cpu() for k, v in net.state_dict().items()})
    return wrapped.eval()


def input_size_rule(net: UNet) -> tuple[int, int, int]:
    """``(min, step, offset)``: valid input sides are ``min + n * step``; output side = input side + offset."""
    minimum = net.valid_input_size(1)
    step = net.step
    if net._output_size(minimum + step) is None:  # noqa: SLF001 - the network's own size rule
        raise ValueError(f"input sizes of this network do not follow min + n * step (min {minimum}, step {step})")
    return minimum, step, -2 * net.halo


def package_size_rule(net: UNet) -> tuple[int, int]:
    """``(min, step)``: the input sides the bioimage.io package takes, ``min + n * step``: sides n whose mirrored
    n + 2 halo the network takes, above 2 halo (what is left of a block once bioimage.io crops its halo; and
    "reflect" needs more than the halo). The output has the input's size.

    >>> package_size_rule(UNet(depth=2, base_channels=4))  # halo 8, valid sizes 18 + 2n
    (18, 2)
    """
    minimum, step, _ = input_size_rule(net)
    side = minimum - 2 * net.halo
    if side <= 2 * net.halo:
        side += -(-(2 * net.halo + 1 - side) // step) * step
    return side, step


def example_input(net: UNet, size: int = 64, seed: int = 0, mirrored: bool = False) -> np.ndarray:
    """A raw test image ``(1, in_channels, S, S)`` float32 of synthetic cells, S the valid size >= ``size`` (of
    the network, or with ``mirrored`` of the bioimage.io package, `package_size_rule`)."""
    from .synthetic import make_cells

    if mirrored:
        minimum, step = package_size_rule(net)
        side = minimum + max(0, -(-(size - minimum) // step)) * step
    else:
        side = net.valid_input_size(size)
    image, _ = make_cells((side, side), seed=seed)
    channels = [np.roll(image, 3 * c, axis=-1) * (1.0 + 0.5 * c) for c in range(net.config.in_channels)]
    return (np.stack(channels)[None] * 1000.0).astype(np.float32)


def normalize_like_bioimageio(raw: np.ndarray, low: float, high: float, eps: float = 1e-6) -> np.ndarray:
    """bioimage.io's ``scale_range`` over the axes (y, x): per sample and channel, as napari-unet normalises."""
    lo = np.percentile(raw, low, axis=(-2, -1), keepdims=True)
    hi = np.percentile(raw, high, axis=(-2, -1), keepdims=True)
    return ((raw - lo) / (hi - lo + eps)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ formats


def export_torchscript(bundle, path: str | Path, mirrored: bool = False) -> Path:
    """A TorchScript file of the network with its softmax (traced; valid for every valid input size; `mirrored`:
    `probability_net`'s, as in the bioimage.io package)."""
    net = probability_net(bundle.net, mirrored)
    example = torch.from_numpy(normalize_like_bioimageio(example_input(bundle.net, mirrored=mirrored), 1.0, 99.8))
    with torch.no_grad(), _quiet_tracer():
        traced = torch.jit.trace(net, example)
    path = Path(path)
    buffer = io.BytesIO()  # written by Python: a full disk is an OSError (torch's own writer aborts the process)
    torch.jit.save(traced, buffer)
    with atomic_write(path) as staging:
        staging.write_bytes(buffer.getvalue())
    return path


def export_onnx(bundle, path: str | Path, opset: int = ONNX_OPSET, mirrored: bool = False) -> Path:
    """An ONNX file of the network with its softmax; batch, height and width are dynamic axes (`mirrored`:
    `probability_net`'s, as in the bioimage.io package)."""
    _require_onnx("ONNX export")
    net = probability_net(bundle.net, mirrored)
    example = torch.from_numpy(normalize_like_bioimageio(example_input(bundle.net, mirrored=mirrored), 1.0, 99.8))
    path = Path(path)
    dynamic = {0: "batch", 2: "y", 3: "x"}
    with atomic_write(path) as staging, torch.no_grad(), _quiet_tracer():
        torch.onnx.export(
            net,
            (example,),
            str(staging),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_ID],
            output_names=[OUTPUT_ID],
            dynamic_axes={INPUT_ID: dynamic, OUTPUT_ID: dynamic},
        )
    return path


def _require_onnx(what: str) -> None:
    """An ImportError naming `what` needs the 'onnx' package (torch.onnx.export does), and how to install it."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError(f"{what} needs the 'onnx' package: pip install 'napari-unet-2015[{EXPORT_EXTRA}]'") from None


@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Silence the tracer's warnings about Python-level shape checks (they only guard invalid sizes) and the
    legacy ONNX exporter's deprecation notice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Constant folding")  # the ONNX exporter's notes on Slice steps
        yield


NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_+- ()")  # bioimage.io's model names


def check_package_description(name: str, license: str) -> None:
    """Refuse, before any work, a model name or licence that bioimage.io's format (0.5) rejects: names of 5 to
    128 characters among letters, digits and "_+- ()"; an SPDX licence identifier (such as "MIT", "CC-BY-4.0")
    that bioimage.io knows (checked against `bioimageio.spec`'s list when it is installed)."""
    bad = sorted(set(name) - NAME_CHARACTERS)
    if bad or not 5 <= len(name) <= 128:
        raise ValueError(
            f"model name {name!r}: bioimage.io takes 5 to 128 characters among letters, digits, spaces and _+-() "
            + (f"(not {' '.join(repr(c) for c in bad)})" if bad else f"({len(name)} given)")
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+-]*", license) or not _known_licence(license):
        raise ValueError(f"licence {license!r}: give an SPDX identifier such as MIT, BSD-3-Clause or CC-BY-4.0")


def _known_licence(license: str) -> bool:
    """Whether bioimage.io's list of licences (`bioimageio.spec`'s, when it is installed) holds `license`; True
    when it cannot be asked (then only the identifier's form is checked)."""
    try:
        from bioimageio.spec._internal.license_id import LicenseId
    except Exception:  # noqa: BLE001 - not installed, or moved in another version: not asked
        return True
    try:
        LicenseId(license)
    except ValueError:  # pydantic's ValidationError
        return False
    return True


TRAINING_DATA_KEYS = ("name", "licence", "url", "citation", "doi")
NOT_TRAINED_ON = ("held_out", "skipped")  # image sets a model's record lists beside its training sets


def recorded_training_data(bundle) -> dict[str, str]:
    """What the model records of its training data, as `export_bioimageio`'s ``training_data``: the entries of
    ``metadata["training_data"]`` when it holds them (`TRAINING_DATA_KEYS`); a record of image sets (the
    built-in model's: set -> files) becomes the names and sizes of the sets it was trained on (not those held out or
    skipped), with the model's recorded ``license`` text as the licence (the built-in's says its data are CC0)."""
    recorded = bundle.metadata.get("training_data")
    if not isinstance(recorded, dict):
        return {}
    described = {k: str(recorded[k]) for k in TRAINING_DATA_KEYS if isinstance(recorded.get(k), str) and recorded[k]}
    if described:
        return described
    sets = [
        f"{key} ({len(value)} images)"
        for key, value in recorded.items()
        if isinstance(value, list) and not key.startswith(NOT_TRAINED_ON)
    ]
    license_text = bundle.metadata.get("license")
    return {
        **({"name": ", ".join(sets)} if sets else {}),
        **(
            {"licence": f"{license_text} (the model's record)"}
            if isinstance(license_text, str) and license_text
            else {}
        ),
    }


def check_training_data(training_data: dict[str, str]) -> None:
    """Refuse, before any work, training-data entries bioimage.io rejects: a URL that is not http(s)."""
    url = training_data.get("url")
    if url and not re.match(r"https?://\S+$", url):
        raise ValueError(f"training data URL {url!r}: give a web address starting with http:// or https://")


def default_package_name(bundle) -> str:
    """The model's recorded name made into a bioimage.io name (other characters become "-"), else a generic one."""
    recorded = str(bundle.metadata.get("name") or "")
    name = "".join(c if c in NAME_CHARACTERS else "-" for c in recorded).strip()[:128]
    return name if len(name) >= 5 else "napari-unet U-Net"


def export_bioimageio(
    bundle,
    path: str | Path,
    *,
    name: str | None = None,
    authors: list[dict[str, str]] | None = None,
    license: str = "BSD-3-Clause",
    training_data: dict[str, str] | None = None,
    test_input: np.ndarray | None = None,
) -> Path:
    """Write a bioimage.io model package (format 0.5) to the folder ``path``, or a zip if it ends in ``.zip``.

    authors: ``[{"name": ...}]`` (default: "napari-unet user"); license: SPDX id of the model;
    training_data: ``{"name", "licence", "url", "citation", "doi"}`` of the data it was trained on (default:
    ``bundle.metadata["training_data"]``); test_input: raw image (1, C, H, W) with H, W of `package_size_rule`
    (default: synthetic cells of about 128 px inside the halo). Returns the path written.

    The package's network mirrors its input's border by the halo first (`ProbabilityUNet`'s ``mirror``): its
    output has the input's size and equals napari-unet's prediction of the image; its output axes declare the
    halo, which a blockwise runner (bioimage.io's) crops from each block.
    """
    name = name or default_package_name(bundle)
    check_package_description(name, license)
    _require_onnx("a bioimage.io package (it holds ONNX weights beside PyTorch's)")
    training_data = training_data if training_data is not None else recorded_training_data(bundle)
    check_training_data(training_data)
    path = Path(path)
    as_zip = path.suffix.lower() == ".zip"
    net = probability_net(bundle.net, mirrored=True)
    config = bundle.net.config
    minimum, step = package_size_rule(bundle.net)
    low, high = bundle.normalization.low, bundle.normalization.high
    if test_input is None:
        raw = example_input(bundle.net, 2 * bundle.net.halo + 128, mirrored=True)
    else:
        raw = np.asarray(test_input, dtype=np.float32)
    if raw.ndim != 4 or raw.shape[:2] != (1, config.in_channels):
        raise ValueError(f"test_input must be (1, {config.in_channels}, H, W), got shape {raw.shape}")
    if any(side < minimum or (side - minimum) % step for side in raw.shape[-2:]):
        raise ValueError(
            f"test_input's height and width must be {minimum} + n * {step} (the package's input sizes), got "
            f"{raw.shape[-2]} x {raw.shape[-1]}"
        )
    normalised = normalize_like_bioimageio(raw, low, high)
    if bundle.normalization.invert is True:  # the package's `scale_linear` step: 1 - x
        normalised = (1.0 - normalised).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(normalised)).numpy()

    staging = Path(tempfile.mkdtemp(prefix=".export.", dir=path.parent if path.parent.exists() else None))
    try:
        np.save(staging / "test_input.npy", raw)
        np.save(staging / "test_output.npy", expected)
        torch.save(net.state_dict(), staging / "weights.pt")
        export_torchscript(bundle, staging / "weights.torchscript.pt", mirrored=True)
        export_onnx(bundle, staging / "weights.onnx", mirrored=True)
        (staging / "README.md").write_text(_documentation(bundle, name, minimum, step, training_data))
        (staging / "environment.yaml").write_text(_environment())
        rdf = _rdf(bundle, name, authors, license, training_data, minimum, step)
        (staging / "rdf.yaml").write_text(_yaml(rdf))
        _write_output(staging, path, as_zip)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _rdf(bundle, name, authors, license, training_data, minimum, step) -> dict[str, Any]:
    config = bundle.net.config
    low, high = float(bundle.normalization.low), float(bundle.normalization.high)
    invert = bundle.normalization.invert
    torch_version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    channels = bundle.metadata.get("channel_names") or _channel_names(bundle)
    classes = ["background", "foreground"] + [f"class{k}" for k in range(2, config.num_classes)]
    space = [{"type": "space", "id": axis, "size": {"min": minimum, "step": step}} for axis in ("y", "x")]
    cite = [PAPER_CITATION, {"text": "napari-unet: the 2015 U-Net as a napari plugin.", "url": TOOL_URL}]
    if training_data.get("citation") and (training_data.get("doi") or training_data.get("url")):
        entry = {"text": training_data["citation"]}
        entry.update({k: training_data[k] for k in ("doi", "url") if training_data.get(k)})
        cite.append(entry)
    return {
        "type": "model",
        "format_version": BIOIMAGEIO_FORMAT_VERSION,
        "name": name,
        "description": _description(bundle),
        "authors": authors or [{"name": "napari-unet user"}],
        "cite": cite,
        "license": license,
        "documentation": "README.md",
        "tags": ["unet", "segmentation", "cells", "2d", "pytorch", "napari-unet"],
        "inputs": [
            {
                "id": INPUT_ID,
                "description": _input_description(invert),
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channels}, *space],
                "test_tensor": {"source": "test_input.npy"},
                "data": {"type": "float32"},
                "preprocessing": [
                    {
                        "id": "scale_range",
                        "kwargs": {"axes": ["y", "x"], "min_percentile": low, "max_percentile": high, "eps": 1e-6},
                    },
                    *([{"id": "scale_linear", "kwargs": {"gain": -1.0, "offset": 1.0}}] if invert is True else []),
                ],
            }
        ],
        "outputs": [
            {
                "id": OUTPUT_ID,
                "description": "class probabilities (softmax); foreground = channel 1",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": classes},
                    *(
                        {
                            "type": "space",
                            "id": axis,
                            "size": {"tensor_id": INPUT_ID, "axis_id": axis, "offset": 0},
                            "halo": bundle.net.halo,
                        }
                        for axis in ("y", "x")
                    ),
                ],
                "test_tensor": {"source": "test_output.npy"},
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt",
                "architecture": {
                    "callable": "ProbabilityUNet",
                    "import_from": "napari_unet.export",
                    "kwargs": {"mirror": bundle.net.halo, **config.to_dict()},
                },
                "pytorch_version": torch_version,
                "dependencies": {"source": "environment.yaml"},
            },
            "torchscript": {
                "source": "weights.torchscript.pt",
                "pytorch_version": torch_version,
                "parent": "pytorch_state_dict",
            },
            "onnx": {"source": "weights.onnx", "opset_version": ONNX_OPSET, "parent": "pytorch_state_dict"},
        },
        "config": {
            "napari_unet": {
                "unet": config.to_dict(),
                "halo": bundle.net.halo,
                "input": bundle.channels.to_dict(),
                "postprocess": bundle.postprocess.to_dict(),
                "normalization": {"low": low, "high": high, "invert": invert},
                **({"object_diameter": float(bundle.object_diameter)} if bundle.object_diameter is not None else {}),
            }
        },
    }


def _channel_names(bundle) -> list[str]:
    """The package input's channel names, from the model's channel choice: "grey" for a grey conversion, else
    the image channels it takes ("channel2", "channel0" for channels 2 and 0)."""
    choice, count = bundle.channels, bundle.net.config.in_channels
    if choice.grey:
        return ["grey"]
    picked = choice.channels if choice.channels is not None else range(count)
    return [f"channel{c}" for c in picked]


def _description(bundle) -> str:
    """The package's description: the model's own (its metadata's) when it has one, else what it is."""
    config = bundle.net.config
    own = bundle.metadata.get("description")
    general = (
        f"U-Net (Ronneberger et al. 2015) for cell segmentation, trained with napari-unet: {config.in_channels}"
        f"-channel input, {config.num_classes}-class probabilities."
    )
    return f"{own.strip()} {general}"[:1024] if isinstance(own, str) and own.strip() else general


def _input_description(invert: bool | str) -> str:
    """What the package's input is (at most 128 characters, bioimage.io's limit), with what its preprocessing
    cannot do: napari-unet's automatic inversion of bright-background images (`Normalization.invert` "auto")
    decides per image, which bioimage.io's steps cannot (the README says more)."""
    if invert == "auto":
        return "raw image, dark background; normalised below as in training. Invert bright-background images first (README)"
    if invert is True:
        return "raw image; normalised by the percentile step below and inverted (1 - x), as in training"
    return "raw image; normalised by the percentile step below, as in training"


def _documentation(bundle, name, minimum, step, training_data) -> str:
    config = bundle.net.config
    halo = bundle.net.halo
    data = training_data or {}
    licence = data.get("licence") or data.get("license") or "not recorded with the model"
    lines = [
        f"# {name}",
        "",
        "A U-Net (Ronneberger, Fischer and Brox, 2015) trained with napari-unet for instance segmentation of cells.",
        "",
        "## Input and output",
        "",
        f"- input `{INPUT_ID}`: (batch, {config.in_channels} channel(s), y, x) float32; y and x must be "
        f"{minimum} + n * {step} (pad or crop other sizes). Each channel is normalised with its {bundle.normalization.low} and "
        f"{bundle.normalization.high} percentiles (bioimage.io `scale_range`)"
        + {True: ", then inverted (1 - x, `scale_linear`)", "auto": "", False: ""}[bundle.normalization.invert]
        + f". The model was trained on {bundle.describe_input()}: give it those channels (napari-unet applies "
        "this choice itself)."
        + (
            " It was trained with dark backgrounds: napari-unet inverts an image whose median lies above the "
            "middle of its range (brightfield, stained histology) after normalising it (1 - x), which a "
            "bioimage.io pipeline does not: invert such images yourself (inverting the raw image before the "
            "percentile step comes close, not exactly: the percentiles are not symmetric)."
            if bundle.normalization.invert == "auto"
            else ""
        )
        + (
            f" Its objects were {bundle.object_diameter:g} px across in training (`config.napari_unet."
            "object_diameter`): rescale images so that theirs are about that size (napari-unet does it itself)."
            if bundle.object_diameter is not None
            else ""
        ),
        f"- output `{OUTPUT_ID}`: (batch, {config.num_classes} classes, y, x) class probabilities, the input's "
        f"size: the network mirrors {halo} pixels around its input (the halo its unpadded convolutions remove), "
        "as napari-unet's overlap-tile prediction does, so a whole image gives napari-unet's probabilities. "
        f"Run in blocks, each block's outer {halo} pixels are mirrored, not seen: crop them (the output axes "
        "declare this halo, which bioimage.io's blockwise prediction crops). Channel 1 is the foreground. Instances: the post-processing stored in `config.napari_unet.postprocess` (threshold, "
        "seeds from the objects' cores, watershed, growth; napari-unet applies it).",
        "",
        "## Architecture",
        "",
        f"depth {config.depth}, {config.base_channels} features at the first level, {config.padding} padding, "
        f"batch norm {'on' if config.batch_norm else 'off'}.",
        "",
        "## Training data",
        "",
        f"- data: {data.get('name') or 'not recorded with the model'}",
        f"- licence of the training data: {licence}",
    ]
    if data.get("url"):
        lines.append(f"- source: {data['url']}")
    if data.get("citation"):
        lines.append(f"- cite: {data['citation']}")
    lines += [
        "",
        "## Validation",
        "",
        "The test tensors in this package are the network's output on a synthetic image. To validate on your "
        "data, compare the segmentation with annotated images (e.g. `napari-unet evaluate`, mean AP at IoU 0.5).",
        "",
        "## Citations",
        "",
        f"- {PAPER_CITATION['text']} doi:{PAPER_CITATION['doi']}",
        f"- napari-unet: {TOOL_URL}",
        *(f"- {text}" for text in _recorded_citations(bundle)),
        "",
    ]
    return "\n".join(lines)


def _recorded_citations(bundle) -> list[str]:
    """The citations the model records (`metadata["citations"]`: its training data's), but the U-Net paper,
    which the package cites anyway."""
    recorded = bundle.metadata.get("citations")
    texts = [str(text) for text in recorded if isinstance(text, str)] if isinstance(recorded, list) else []
    return [text for text in texts if not text.startswith("Ronneberger")]


def _environment() -> str:
    return (
        "name: napari-unet\nchannels:\n  - conda-forge\n  - pytorch\ndependencies:\n  - python>=3.11\n"
        f"  - pytorch>={torch.__version__.split('+')[0]}\n  - pip\n  - pip:\n      - napari-unet-2015\n"
    )


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False, allow_unicode=True)


def _write_output(staging: Path, path: Path, as_zip: bool) -> None:
    """The package in `staging` to `path` (a zip or a folder), complete or not at all: written beside it under a
    temporary name and renamed; a package already there is replaced only once the new one is whole."""
    recover_replaced_folder(path, _is_package)  # an export killed between its two renames: the earlier package
    if path.exists():
        if not (_is_package_zip(path) if as_zip and path.is_file() else _is_package(path)):
            raise ValueError(f"{path} exists and is not a bioimage.io package: choose another --out")
    if as_zip:
        with atomic_write(path) as written, zipfile.ZipFile(written, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(staging.iterdir()):
                archive.write(file, file.name)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    new = temporary_sibling(path, folder=True)
    try:
        shutil.copytree(staging, new, dirs_exist_ok=True)  # the files keep their modes: the umask's
        new.chmod(default_mode(folder=True))  # the folder was made owner-only by mkdtemp
        replace_folder(new, path)
    finally:
        shutil.rmtree(new, ignore_errors=True)


def _is_package(path: Path) -> bool:
    return path.is_dir() and (path / "rdf.yaml").is_file()


def _is_package_zip(path: Path) -> bool:
    """Whether `path` is a zipped bioimage.io package (an rdf.yaml at its top), which --overwrite may replace."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "rdf.yaml" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def check_target(fmt: str, path: str | Path) -> None:
    """Refuse, before any work, a ``path`` that an export as ``fmt`` cannot be written to: a folder, unless the
    export is a bioimage.io package folder and the folder is one; a file where a package folder goes, or a .zip
    that is not a package where a zipped one goes; an ONNX or TorchScript file whose suffix is not its format's
    (``FILE_SUFFIXES``: a TorchScript file named ``.onnx``, or an ONNX file replacing a ``.tif`` image)."""
    path = Path(path)
    package_folder = fmt == "bioimageio" and path.suffix.lower() != ".zip"
    known = [s for suffixes in FILE_SUFFIXES.values() for s in suffixes] + [
        *TIFF_SUFFIXES,
        *PILLOW_SUFFIXES,
        ".csv",
        ".json",
    ]
    if package_folder and path.suffix.lower() in known:  # a package folder named like an image or another file
        raise ValueError(
            f"--out {path.name}: a bioimage.io package is written as a folder or a .zip file: name it "
            f"{path.stem}.zip or {path.stem}"
        )
    if package_folder and path.exists() and not _is_package(path):
        raise ValueError(f"{path} exists and is not a bioimage.io package: choose another --out")
    if not package_folder and path.is_dir():
        raise ValueError(f"{path} is a folder: the {fmt} export is one file; choose a file name for --out")
    if fmt == "bioimageio" and path.is_file() and not _is_package_zip(path):
        raise ValueError(f"{path} exists and is not a bioimage.io package: choose another --out")
    suffixes = FILE_SUFFIXES.get(fmt)
    if suffixes and path.suffix.lower() not in suffixes:
        others = f" (or {', '.join(suffixes[1:])})" if len(suffixes) > 1 else ""
        raise ValueError(
            f"--out {path.name}: {FORMAT_NAMES[fmt]} export is written as a {suffixes[0]} file{others}: "
            f"name it {path.stem}{suffixes[0]}"
        )


def export_model(bundle, fmt: str, path: str | Path, **options: Any) -> Path:
    """Export ``bundle`` as ``fmt`` ("bioimageio", "onnx" or "torchscript") to ``path``."""
    check_target(fmt, path)
    if fmt == "bioimageio":
        return export_bioimageio(bundle, path, **options)
    if options:
        raise ValueError(f"options {sorted(options)} apply to the bioimageio format only")
    if fmt == "onnx":
        return export_onnx(bundle, path)
    if fmt == "torchscript":
        return export_torchscript(bundle, path)
    raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
