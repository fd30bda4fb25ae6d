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
from .channels import ChannelChoice
from .io import apply_normalization, percentiles
from .model import UNet, UNetConfig
from .postprocess import PostprocessConfig, probs_to_labels
from .tiling import predict_tiled

FORMAT = "napari-unet-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "training_state.pt"


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
                batch_size: int = 1) -> np.ndarray:
        """Probabilities (classes, H, W) of a raw (H, W) or (C, H, W) image, normalised tile by tile.

        The image holds the network's input channels: apply the model's channel choice first with `prepare`.
        """
        axes = "YX" if image.ndim == 2 else "CYX"
        return predict_tiled(
            self.net, image, tile_size, device=device, out=out, batch_size=batch_size,
            preprocess=self.preprocessor(image, axes),
        )

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
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in bundle.net.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE, metadata={"format": FORMAT})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=_json_default))
        if training_state is not None:
            torch.save(training_state, staging / STATE_FILE)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def is_model_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild the model saved in the folder `path`; a missing, corrupted or foreign folder is a ValueError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    if not is_model_folder(path):
        raise ValueError(f"{path} is not a napari-unet model folder: expected {CONFIG_FILE} and {WEIGHTS_FILE} in it")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path / CONFIG_FILE} is not valid JSON ({error}); the model folder is corrupted") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG_FILE} is not a napari-unet model config (no \"format\": \"{FORMAT}\")")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} was saved by a newer napari-unet (format {config['format_version']}); this one reads "
            f"format <= {FORMAT_VERSION}: upgrade napari-unet"
        )
    try:
        net = UNet(UNetConfig.from_dict(config["unet"]))
        normalization = Normalization.from_dict(config.get("normalization", {}))
        postprocess = PostprocessConfig.from_dict(config.get("postprocess", {}))
        channels = ChannelChoice.from_dict({k: v for k, v in config.get("input", {}).items() if k != "in_channels"})
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path / CONFIG_FILE} has an invalid configuration: {error}") from None
    try:
        state = load_file(path / WEIGHTS_FILE, device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path / WEIGHTS_FILE} cannot be read ({error}); the model folder is corrupted") from None
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ValueError(f"the weights in {path} do not match its config.json ({first})") from None
    return ModelBundle(net.to(device), normalization, postprocess, config.get("metadata", {}), channels)


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
