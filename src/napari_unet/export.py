"""Share a model with other tools: a bioimage.io package (format 0.5), ONNX or TorchScript.

Every export holds the network followed by a softmax over the classes (`ProbabilityUNet`): input
``(N, in_channels, H, W)`` float32, normalised as the model was trained (percentiles per channel and image, see
``Normalization``); class probabilities out. The sizes differ:

- ONNX and TorchScript files: the valid network as it is, output ``(N, num_classes, H - 2 halo, W - 2 halo)``;
  H and W must be ``min + n * step`` (`input_size_rule`, derived from the network as ``halo`` is), and the
  files refuse other sizes with an error naming this rule.
- the bioimage.io package: output ``(N, num_classes, H, W)``, the input's size, whose outer `package_halo`
  pixels are zeros that bioimage.io crops after padding the image by them (mirrored); H and W follow
  `package_size_rule`. Block by block, bioimage.io then gives napari-unet's probabilities of the image; a
  whole image too, but normalised with the percentiles of the padded image (bioimageio.core pads it first).

The package is a folder (or ``.zip``) with ``rdf.yaml``, the weights as ``pytorch_state_dict`` (architecture
``napari_unet.export:ProbabilityUNet``), ``torchscript`` and ``onnx``, test tensors computed with the exported
network, and a ``README.md`` with the citations and the training data's licence.

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
BIOIMAGEIO_FORMAT_VERSION = "0.5.14"  # a format with the input's `pad` (its padding mode), as bioimageio.spec 0.5.14
INPUT_ID, OUTPUT_ID = "raw", "probabilities"
PAPER_CITATION = {
    "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
    "MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
TOOL_URL = "https://github.com/napari-unet/napari-unet-2015"


class ProbabilityUNet(nn.Module):
    """A :class:`UNet` followed by a softmax over the classes: x (N, C, H, W) -> probabilities (N, K, H', W').

    Built from the UNet's configuration as keyword arguments, as a bioimage.io architecture is.

    halo 0: the network as it is, H' = H - 2 ``net.halo``; H and W valid sizes of the network
    (`input_size_rule`). halo > 0 (`package_halo`, the bioimage.io package's layout): H' = H, and the outer
    ``halo`` pixels of the output are zeros, not a prediction: bioimage.io pads the image by this halo (mirrored,
    "reflect"), predicts, and crops it again, whole or block by block. Inside, pixel (y, x) is the network's
    probability for input pixel (y, x), on the pooling grid that starts ``halo - net.halo`` pixels into the input
    (valid padding; 0 with 'same' padding, whose halo is a multiple of the step): for an image padded by
    ``halo``, the grid of napari-unet's overlap-tile prediction of the image, so the inside is napari-unet's
    probabilities. H and W are ``2 halo + n * step`` (n >= 1, `package_size_rule`).
    """

    def __init__(self, halo: int = 0, **config: Any):
        super().__init__()
        self.net = UNet(UNetConfig.from_dict(config))
        self.halo = int(halo)
        net_halo, step = self.net.halo, self.net.step
        if self.halo and (self.halo < net_halo or (2 * self.halo) % step):
            raise ValueError(
                f"halo {self.halo}: the package's halo must be at least the network's ({net_halo}), and 2 halo a "
                f"multiple of its step ({step}); package_halo gives {package_halo(self.net)}"
            )
        self.minimum, self.step = (2 * self.halo + step, step) if self.halo else input_size_rule(self.net)[:2]
        # valid padding: the network starts `skip` pixels in (its output pixel k is input pixel k + halo), and
        # `extend` pixels at the end (any values: no kept output sees them) make its input a valid size; 'same'
        # padding: its output pixel k is input pixel k. Of its output, `keep_from` pixels are dropped at the
        # start and `keep_to` at the end, which leaves the input's pixels [halo, H - halo)
        same = self.net.config.padding == "same"
        self.skip = 0 if same or not self.halo else self.halo - net_halo
        trimmed = self.minimum - self.skip
        self.extend = self.net.valid_input_size(trimmed) - trimmed if self.halo else 0
        self.keep_from = self.halo if same else 0
        self.keep_to = self.halo if same else self.skip + self.extend  # pixels dropped from the output's end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(tuple(x.shape[-2:]))
        if not self.halo:
            return torch.softmax(self.net(x), dim=1)
        x = x[..., self.skip :, self.skip :]
        if self.extend:
            x = nn.functional.pad(x, (0, self.extend, 0, self.extend))
        probs = torch.softmax(self.net(x), dim=1)
        end = -self.keep_to if self.keep_to else None
        probs = probs[..., self.keep_from : end, self.keep_from : end]
        return nn.functional.pad(probs, (self.halo,) * 4)

    def size_rule_text(self) -> str:
        """The input sides this network takes, in words (as the exported files' errors say it)."""
        return size_rule_text(self.minimum, self.step, self.halo)

    def check_size(self, shape: tuple[int, ...]) -> None:
        """A ValueError naming the rule when `shape` (H, W) is not ``minimum + n * step``."""
        if any(int(n) < self.minimum or (int(n) - self.minimum) % self.step for n in shape):
            raise ValueError(f"{self.size_rule_text()}; got {' x '.join(str(int(n)) for n in shape)}")


def size_rule_text(minimum: int, step: int, halo: int = 0) -> str:
    """The error exported networks give for other input sides: "input height and width must be 44 + 4n ..."."""
    text = f"input height and width must be {minimum} + {step}n (n = 0, 1, 2, ...)"
    if halo:
        return f"{text}: an image of {minimum - 2 * halo} + {step}n px padded by the {halo} px halo on each side"
    return f"{text}, the sizes this valid-convolution U-Net takes"


def probability_net(net: UNet, package: bool = False) -> ProbabilityUNet:
    """A :class:`ProbabilityUNet` on CPU, in eval mode, with a copy of ``net``'s weights (``package``: the
    bioimage.io package's, with `package_halo`)."""
    wrapped = ProbabilityUNet(halo=package_halo(net) if package else 0, **net.config.to_dict())
    wrapped.net.load_state_dict({k: v.detach().cpu() for k, v in net.state_dict().items()})
    return wrapped.eval()


def input_size_rule(net: UNet) -> tuple[int, int, int]:
    """``(min, step, offset)``: valid input sides are ``min + n * step``; output side = input side + offset."""
    minimum = net.valid_input_size(1)
    step = net.step
    if net._output_size(minimum + step) is None:  # noqa: SLF001 - the network's own size rule
        raise ValueError(f"input sizes of this network do not follow min + n * step (min {minimum}, step {step})")
    return minimum, step, -2 * net.halo


def package_halo(net: UNet) -> int:
    """The halo the bioimage.io package declares: the context napari-unet's overlap-tile reads around a tile
    (the valid network's halo; for 'same' padding the receptive radius rounded up to the step), rounded up so
    that 2 halo is a multiple of the step. Then every block bioimage.io cuts (its inner part a multiple of the
    step, `package_size_rule`) starts on napari-unet's pooling grid, and blockwise prediction has no seams.

    >>> package_halo(UNet(depth=3, base_channels=4)), package_halo(UNet(depth=5, base_channels=4))  # halos 20, 92
    (20, 96)
    """
    step = net.step
    if net.config.padding == "same":
        return -(-net.receptive_radius // step) * step
    return net.halo + (-2 * net.halo) % step // 2


def package_size_rule(net: UNet) -> tuple[int, int]:
    """``(min, step)``: the input sides the bioimage.io package's network takes, ``min + n * step`` with min = 2
    `package_halo` + step: blocks whose inner part (the block less its halo) is a multiple of the step. Whole
    images of these sizes (bioimage.io pads them by the halo, which keeps them in the rule) and block sizes
    (``blocksize_parameter`` n) both follow it; the output has the input's size.

    >>> package_size_rule(UNet(depth=2, base_channels=4))  # halo 8, step 2
    (18, 2)
    """
    return 2 * package_halo(net) + net.step, net.step


def example_input(net: UNet, size: int = 64, seed: int = 0, package: bool = False) -> np.ndarray:
    """A raw test image ``(1, in_channels, S, S)`` float32 of synthetic cells, S the valid size >= ``size`` (of
    the network, or with ``package`` of the bioimage.io package, `package_size_rule`)."""
    from .synthetic import make_cells

    if package:
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


def export_torchscript(bundle, path: str | Path, package: bool = False) -> Path:
    """A TorchScript file of the network with its softmax (`probability_net`; ``package``: the bioimage.io
    package's). Traced, inside a scripted check that refuses other input sizes than the rule's with a
    ValueError naming it (the traced network alone would return wrong probabilities for them)."""
    net = probability_net(bundle.net, package)
    example = torch.from_numpy(normalize_like_bioimageio(example_input(bundle.net, package=package), 1.0, 99.8))
    with torch.no_grad(), _quiet_tracer():
        traced = torch.jit.trace(net, example)
    checked = torch.jit.script(_CheckedSizes(traced, net.minimum, net.step, net.size_rule_text()))
    path = Path(path)
    buffer = io.BytesIO()  # written by Python: a full disk is an OSError (torch's own writer aborts the process)
    torch.jit.save(checked, buffer)
    with atomic_write(path) as staging:
        staging.write_bytes(buffer.getvalue())
    return path


class _CheckedSizes(nn.Module):
    """A traced network behind the check of its input's height and width (scripted: the check stays in the file)."""

    def __init__(self, inner: nn.Module, minimum: int, step: int, rule: str):
        super().__init__()
        self.inner = inner
        self.minimum = minimum
        self.step = step
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        for side in [height, width]:
            if side < self.minimum or (side - self.minimum) % self.step != 0:
                raise ValueError(self.rule + "; got " + str(height) + " x " + str(width))
        return self.inner(x)


def export_onnx(bundle, path: str | Path, opset: int = ONNX_OPSET, package: bool = False) -> Path:
    """An ONNX file of the network with its softmax (`probability_net`; ``package``: the bioimage.io package's);
    batch, height and width are dynamic axes. Other input sizes than the rule's fail in a node named by the rule
    (`_refuse_other_sizes`): onnxruntime's error says it."""
    _require_onnx("ONNX export")
    import onnx

    net = probability_net(bundle.net, package)
    example = torch.from_numpy(normalize_like_bioimageio(example_input(bundle.net, package=package), 1.0, 99.8))
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
        model = onnx.load(str(staging))
        _refuse_other_sizes(model, net.minimum, net.step, net.size_rule_text())
        onnx.checker.check_model(model)
        onnx.save(model, str(staging))
    return path


def _refuse_other_sizes(model, minimum: int, step: int, rule: str) -> None:
    """Make the ONNX graph `model` fail for input sides other than ``minimum + n * step``: ONNX has no assert, so
    a one-element tensor is reshaped to ``1 + (number of bad sides)`` elements (which fails unless it is 1) and
    added (a zero) to the input. The failing node is named by `rule`, which onnxruntime's error shows."""
    from onnx import TensorProto, helper

    graph = model.graph
    raw = graph.input[0].name
    checked = f"{raw}_checked"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == raw:
                node.input[i] = checked

    def const(name: str, values: list, dtype=TensorProto.INT64) -> str:
        graph.initializer.append(helper.make_tensor(f"size_check_{name}", dtype, [len(values)], values))
        return f"size_check_{name}"

    nodes = [
        helper.make_node("Shape", [raw], ["size_check_shape"]),
        helper.make_node("Slice", ["size_check_shape", const("from", [2]), const("to", [4])], ["size_check_sides"]),
        helper.make_node("Sub", ["size_check_sides", const("minimum", [minimum])], ["size_check_beyond"]),
        helper.make_node("Mod", ["size_check_beyond", const("step", [step])], ["size_check_remainder"]),
        helper.make_node("Less", ["size_check_sides", "size_check_minimum"], ["size_check_small"]),
        helper.make_node("Cast", ["size_check_small"], ["size_check_small_count"], to=TensorProto.INT64),
        helper.make_node("Add", ["size_check_remainder", "size_check_small_count"], ["size_check_bad"]),
        helper.make_node("ReduceSum", ["size_check_bad"], ["size_check_total"], keepdims=1),
        helper.make_node("Add", ["size_check_total", const("one", [1])], ["size_check_target"]),
        helper.make_node(
            "Reshape",
            [const("zero_value", [0.0], TensorProto.FLOAT), "size_check_target"],
            ["size_check_zero"],
            name=rule,
        ),
        helper.make_node("Add", [raw, "size_check_zero"], [checked]),
    ]
    network = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + network)


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


def check_training_data(training_data: dict[str, str]) -> dict[str, str]:
    """`training_data` as the package writes it, refused before any work where bioimage.io would reject it: a URL
    must be http(s); a DOI is written in its ``10.xxxx/...`` form (a ``https://doi.org/10.xxxx/...`` link or
    ``doi:10.xxxx/...`` is shortened to it), anything else is refused."""
    url = training_data.get("url")
    if url and not re.match(r"https?://\S+$", url):
        raise ValueError(f"training data URL {url!r}: give a web address starting with http:// or https://")
    doi = training_data.get("doi")
    if not doi:
        return dict(training_data)
    bare = re.sub(r"^(https?://(dx\.)?doi\.org/|doi:\s*)", "", doi.strip(), flags=re.IGNORECASE)
    if not re.fullmatch(r"10\.\d{4,9}/\S+", bare):
        raise ValueError(
            f"training data DOI {doi!r}: give a DOI such as 10.5281/zenodo.1234567 (or https://doi.org/10.5281/...)"
        )
    return {**training_data, "doi": bare}


def check_authors(authors: list[dict[str, str]]) -> None:
    """Refuse, before any work, author names bioimage.io rejects: its format takes no "/" or "\\" in them."""
    for author in authors:
        name = str(author.get("name", ""))
        if "/" in name or "\\" in name:
            raise ValueError(
                f"author name {name!r}: bioimage.io takes no '/' or '\\' in author names; give each author "
                "separately (--author repeated)"
            )


def check_rdf(rdf: dict[str, Any], root: Path) -> None:
    """Refuse, before any work, a package description that `bioimageio.spec` (when it is installed) finds
    invalid, with its errors: what the checks above do not know of yet. Only the description is validated; the
    files it names are written afterwards."""
    try:
        from bioimageio.spec import ValidationContext, build_description
    except ImportError:
        return
    with ValidationContext(perform_io_checks=False, root=root):
        description = build_description(json.loads(json.dumps(rdf)))
    if type(description).__name__ != "InvalidDescr":
        return
    errors = [
        f"{'.'.join(map(str, error.loc))}: {error.msg}"
        for detail in description.validation_summary.details
        for error in detail.errors
    ]
    raise ValueError("bioimage.io would reject this package: " + "; ".join(errors[:5] or ["invalid description"]))


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

    The package's network (`ProbabilityUNet` with `package_halo`) gives an output of its input's size whose outer
    halo is zeros; its output axes declare that halo and its input asks for "reflect" padding. bioimage.io pads
    an image by the halo (mirrored, as napari-unet's overlap-tile), predicts and crops the halo again: block by
    block napari-unet's probabilities of the image; a whole image too, normalised with the percentiles of the
    padded image (bioimageio.core 0.11 pads before it normalises). Everything bioimage.io would reject is
    refused before any work (`check_rdf`).
    """
    name = name or default_package_name(bundle)
    check_package_description(name, license)
    authors = authors or [{"name": "napari-unet user"}]
    check_authors(authors)
    _require_onnx("a bioimage.io package (it holds ONNX weights beside PyTorch's)")
    training_data = check_training_data(training_data if training_data is not None else recorded_training_data(bundle))
    path = Path(path)
    as_zip = path.suffix.lower() == ".zip"
    config = bundle.net.config
    minimum, step = package_size_rule(bundle.net)
    low, high = bundle.normalization.low, bundle.normalization.high
    if test_input is None:
        raw = example_input(bundle.net, 2 * package_halo(bundle.net) + 128, package=True)
    else:
        raw = np.asarray(test_input, dtype=np.float32)
    if raw.ndim != 4 or raw.shape[:2] != (1, config.in_channels):
        raise ValueError(f"test_input must be (1, {config.in_channels}, H, W), got shape {raw.shape}")
    if any(side < minimum or (side - minimum) % step for side in raw.shape[-2:]):
        raise ValueError(
            f"test_input's height and width must be {minimum} + n * {step} (the package's input sizes), got "
            f"{raw.shape[-2]} x {raw.shape[-1]}"
        )
    rdf = _rdf(bundle, name, authors, license, training_data, minimum, step)
    check_rdf(rdf, path.parent)

    net = probability_net(bundle.net, package=True)
    normalised = normalize_like_bioimageio(raw, low, high)
    if bundle.normalization.invert is True:  # the package's `scale_linear` step: 1 - x
        normalised = (1.0 - normalised).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(normalised)).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_replaced_folder(path, _is_package)  # first: the next line would delete a package a kill left aside
    remove_stale_temporaries(path)  # what a killed export left, this staging folder's included
    staging = temporary_sibling(path, folder=True)
    try:
        np.save(staging / "test_input.npy", raw)
        np.save(staging / "test_output.npy", expected)
        torch.save(net.state_dict(), staging / "weights.pt")
        export_torchscript(bundle, staging / "weights.torchscript.pt", package=True)
        export_onnx(bundle, staging / "weights.onnx", package=True)
        (staging / "README.md").write_text(_documentation(bundle, name, minimum, step, training_data))
        (staging / "environment.yaml").write_text(_environment())
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
    halo = package_halo(bundle.net)
    space = [
        {"type": "space", "id": axis, "size": {"min": minimum, "step": step}, "concatenable": True}
        for axis in ("y", "x")
    ]
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
        "authors": authors,
        "cite": cite,
        "license": license,
        "documentation": {"source": "README.md"},
        "tags": ["unet", "segmentation", "cells", "2d", "pytorch", "napari-unet"],
        "inputs": [
            {
                "id": INPUT_ID,
                "description": _input_description(invert),
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channels}, *space],
                "test_tensor": {"source": "test_input.npy"},
                "data": {"type": "float32"},
                "pad": {"mode": "reflect"},  # bioimage.io pads by the output's halo: mirrored, as napari-unet
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
                            **({"halo": halo} if halo else {}),  # bioimage.io takes no halo 0
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
                    "kwargs": {"halo": halo, **config.to_dict()},
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
    halo = package_halo(bundle.net)
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
        f"- output `{OUTPUT_ID}`: (batch, {config.num_classes} classes, y, x) class probabilities of the input's "
        f"size whose outer {halo} pixels (the halo the output axes declare) are zeros: pad the image by {halo} "
        "pixels, mirrored (`reflect`, the input's `pad`), predict, and crop them again, as bioimage.io does by "
        "itself for a whole image and for each block of a blockwise prediction. That gives napari-unet's "
        "probabilities of the image: its overlap-tile prediction pads the same way, and every block starts on "
        f"its pooling grid (a block's inner part is a multiple of {step} px). bioimageio.core (0.11) normalises "
        "a whole image after padding it, with the percentiles of the padded image, which moves the probabilities "
        "a little (blockwise prediction normalises first: predict blockwise for napari-unet's exact values). "
        "Channel 1 is the foreground. "
        "Instances: the post-processing stored in `config.napari_unet.postprocess` (threshold, seeds from the "
        "objects' cores, watershed, growth; napari-unet applies it).",
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
