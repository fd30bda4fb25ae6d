"""A trained model is a folder: `config.json` (architecture, normalisation, post-processing, training metadata)
and `weights.safetensors` (tensors only: loading runs no code).

>>> import tempfile
>>> from napari_unet.model import UNet
>>> folder = save_model(tempfile.mkdtemp() + "/cells", ModelBundle(UNet(depth=2, base_channels=4)))
>>> load_model(folder).net.config.depth
2
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._config import Config, check_range
from .io import TEMPORARY_SUFFIX, _process_alive, apply_normalization, percentiles, remove_stale_temporaries
from .channels import ChannelChoice
from .model import UNet, UNetConfig
from .postprocess import PostprocessConfig, probs_to_labels
from .tiling import predict_tiled, predict_tta

FORMAT = "napari-unet-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "training_state.pt"
# What a model folder's config may ask for: a file that asks for more is corrupted or hostile, not a model.
CONFIG_LIMITS = {"in_channels": 4096, "num_classes": 4096, "depth": 16, "base_channels": 4096, "convs_per_level": 16}


@dataclass(frozen=True)
class Normalization(Config):
    """Percentile normalisation applied to every input: (x - p_low) / (p_high - p_low), per channel."""

    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        check_range(self, "low", 0.0, 100.0, meaning="a percentile")
        check_range(self, "high", 0.0, 100.0, meaning="a percentile")
        if not self.low < self.high:
            raise ValueError(f"normalisation percentiles need 0 <= low < high <= 100, got {self.low}, {self.high}")


@dataclass
class ModelBundle:
    """A network with everything needed to use it: normalisation, post-processing and where it came from.

    channels: how an image's channels become the network's `in_channels` (saved as config.json's "input").
    """

    net: UNet
    normalization: Normalization = field(default_factory=Normalization)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    metadata: dict[str, Any] = field(default_factory=dict)
    channels: ChannelChoice = field(default_factory=ChannelChoice)

    def prepare(self, image, axes: str, name: str = "the image", choice: ChannelChoice | None = None):
        """``(image, axes)`` as the network takes them: the channel choice (``choice``, default the model's)
        applied, and the channel count checked against the network's, with an error that says what to do."""
        choice = self.channels if choice is None else choice
        image, axes = choice.apply(image, axes)
        found = image.shape[axes.index("C")] if "C" in axes else 1
        expected = self.net.config.in_channels
        if found != expected:
            raise ValueError(
                f"the model expects {expected} channel(s) ({self.describe_input()}); {name} gives {found} with "
                f"{choice.describe()} (axes {axes!r}, shape {tuple(image.shape)}): choose channels "
                "(--channels 0,1 / the Channels box) or grey conversion (--grey)"
            )
        return image, axes

    def describe_input(self) -> str:
        """What the model expects, in words: "1 channel: grey (luminance/mean of all channels)"."""
        n = self.net.config.in_channels
        return f"{n} channel{'s' if n > 1 else ''}: {self.channels.describe()} of the image"

    def preprocessor(self, image, axes: str = "CYX"):
        """The per-window normalisation with percentiles of the whole `image` (read from a bounded sample)."""
        lo, hi = percentiles(image, self.normalization.low, self.normalization.high, axes)
        lo, hi = lo.reshape(-1, 1, 1), hi.reshape(-1, 1, 1)
        return lambda window: apply_normalization(window, lo, hi)

    def predict(self, image, *, tile_size: int | None = None, device: str | torch.device = "auto", out=None,
                batch_size: int = 1, tta: bool = False) -> np.ndarray:
        """Probabilities (classes, H, W) of a raw (H, W) or (C, H, W) image, normalised tile by tile.

        tta: test-time augmentation, the mean over the 8 flips and 90-degree rotations (`tiling.predict_tta`).
        """
        axes = "YX" if image.ndim == 2 else "CYX"
        preprocess = self.preprocessor(image, axes)
        if not tta:
            return predict_tiled(self.net, image, tile_size, device=device, out=out, batch_size=batch_size,
                                 preprocess=preprocess)
        probs = predict_tta(self.net, image, tile_size, device=device, batch_size=batch_size, preprocess=preprocess)
        if out is None:
            return probs
        out[...] = probs
        return out

    def segment(self, image, **kwargs: Any) -> np.ndarray:
        """Instance labels (H, W) int32 of a raw image: `predict`, then the saved post-processing."""
        return probs_to_labels(self.predict(image, **kwargs)[1], self.postprocess)


def save_model(path: str | Path, bundle: ModelBundle, training_state: dict[str, Any] | None = None) -> Path:
    """Write `bundle` to the folder `path` atomically: a crash mid-write never leaves a half-written model.

    The files are written to a temporary sibling folder, which then replaces `path` by renames.
    training_state: tensors and plain values to resume training (`training_state.pt`, read weights-only).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "unet": bundle.net.config.to_dict(),
        "input": {"in_channels": bundle.net.config.in_channels, **bundle.channels.to_dict()},
        "normalization": bundle.normalization.to_dict(),
        "postprocess": bundle.postprocess.to_dict(),
        "metadata": {**_versions(), **bundle.metadata},
    }
    recover_interrupted_save(path)
    remove_stale_temporaries(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMPORARY_SUFFIX, dir=path.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in bundle.net.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE, metadata={"format": FORMAT})
        if training_state is not None:
            torch.save(training_state, staging / STATE_FILE)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=_json_default))
        if path.exists():
            # Two renames: a process killed between them leaves the previous model in `old`, which
            # `recover_interrupted_save` puts back. `path` is never a half-written folder.
            old = path.with_name(f".{path.name}.{os.getpid()}.old{TEMPORARY_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(staging, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def is_model_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def recover_interrupted_save(path: str | Path) -> Path | None:
    """Put back the previous model of `path` when a save was killed between its two renames.

    `save_model` moves the old folder to ``.<name>.<pid>.old.tmp`` just before renaming the new one into place;
    when `path` is missing and such a folder of a process that no longer runs holds a model, it is renamed
    back to `path`. Returns the recovered folder, or None.
    """
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return None
    prefix, suffix = f".{path.name}.", f".old{TEMPORARY_SUFFIX}"
    for candidate in sorted(path.parent.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        name = candidate.name
        pid = name[len(prefix):-len(suffix)] if name.startswith(prefix) and name.endswith(suffix) else ""
        if pid.isdigit() and not _process_alive(int(pid)) and is_model_folder(candidate):
            os.replace(candidate, path)
            return path
    return None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild the model saved in the folder `path`; a missing, corrupted or foreign folder is a ValueError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    recover_interrupted_save(path)
    if not is_model_folder(path):
        raise ValueError(f"{path} is not a napari-unet model folder: expected {CONFIG_FILE} and {WEIGHTS_FILE} in it")
    try:
        config = json.loads((path / CONFIG_FILE).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path / CONFIG_FILE} is not valid JSON ({error}); the model folder is corrupted") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG_FILE} is not a napari-unet model config (no \"format\": \"{FORMAT}\")")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path / CONFIG_FILE} has format_version {version!r}; expected an integer")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} was saved by a newer napari-unet (format {version}); this one reads "
            f"format <= {FORMAT_VERSION}: upgrade napari-unet"
        )
    try:
        unet = UNetConfig.from_dict(_checked_unet(config.get("unet")))
        normalization = Normalization.from_dict(_checked_dict(config.get("normalization", {}), "normalization"))
        postprocess = PostprocessConfig.from_dict(_checked_dict(config.get("postprocess", {}), "postprocess"))
        metadata = _checked_dict(config.get("metadata", {}), "metadata")
        channels = ChannelChoice.from_dict(
            {k: v for k, v in _checked_dict(config.get("input", {}), "input").items() if k != "in_channels"})
        with torch.device("meta"):  # the shapes the config asks for, without allocating them
            expected = {k: tuple(v.shape) for k, v in UNet(unet).state_dict().items()}
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise ValueError(f"{path / CONFIG_FILE} has an invalid configuration: {error}") from error
    try:
        found = _weight_shapes(path / WEIGHTS_FILE)
        if found != expected:
            raise RuntimeError(_shape_difference(expected, found))
        state = load_file(path / WEIGHTS_FILE, device=str(device))
        net = UNet(unet)
        net.load_state_dict(state)
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError) as error:
        raise ValueError(f"{path / WEIGHTS_FILE} cannot be read ({error}); the model folder is corrupted") from error
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ValueError(f"the weights in {path} do not match its config.json ({first})") from error
    return ModelBundle(net.to(device), normalization, postprocess, metadata, channels)


def _checked_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _checked_unet(value: Any) -> dict[str, Any]:
    """The "unet" entry, its integers checked against `CONFIG_LIMITS` before a network is built from it."""
    value = _checked_dict(value, "unet")
    for name, limit in CONFIG_LIMITS.items():
        if name in value:
            number = value[name]
            if not isinstance(number, int) or isinstance(number, bool) or not 0 < number <= limit:
                raise ValueError(f"unet.{name} must be an integer in 1..{limit}, got {number!r}")
    for name in ("batch_norm",):
        if name in value and not isinstance(value[name], bool):
            raise ValueError(f"unet.{name} must be true or false, got {value[name]!r}")
    if "dropout" in value and (not isinstance(value["dropout"], (int, float)) or isinstance(value["dropout"], bool)):
        raise ValueError(f"unet.dropout must be a number, got {value['dropout']!r}")
    return value


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        return {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}


def _shape_difference(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        return f"missing tensors {missing[:3]}, unexpected tensors {unexpected[:3]}"
    key = next(k for k in expected if expected[k] != found[k])
    return f"{key} has shape {found[key]}, the config asks for {expected[key]}"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("napari-unet-2015")
    except PackageNotFoundError:
        ours = "unknown"
    return {"napari_unet_version": ours, "torch_version": torch.__version__, "python_version": platform.python_version()}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a model config")
