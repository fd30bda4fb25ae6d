"""napari-unet: the U-Net of Ronneberger, Fischer and Brox (2015) for napari, scripts and the command line.

>>> from napari_unet import UNet, predict_tiled, weight_map, load_model  # doctest: +SKIP

The names below are imported on first use, so `import napari_unet` stays cheap (napari reads the plugin
manifest without loading torch).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "UNet": "model",
    "UNetConfig": "model",
    "predict_tiled": "tiling",
    "weight_map": "weights",
    "make_target": "targets",
    "augment": "augment",
    "AugmentConfig": "augment",
    "weighted_cross_entropy": "losses",
    "Trainer": "training",
    "TrainConfig": "training",
    "Sample": "training",
    "preset": "training",
    "ModelBundle": "modelfile",
    "load_model": "modelfile",
    "save_model": "modelfile",
    "probs_to_labels": "postprocess",
    "PostprocessConfig": "postprocess",
    "read_image": "io",
    "make_cells": "synthetic",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .augment import AugmentConfig, augment
    from .io import read_image
    from .losses import weighted_cross_entropy
    from .model import UNet, UNetConfig
    from .modelfile import ModelBundle, load_model, save_model
    from .postprocess import PostprocessConfig, probs_to_labels
    from .synthetic import make_cells
    from .targets import make_target
    from .tiling import predict_tiled
    from .training import Sample, TrainConfig, Trainer, preset
    from .weights import weight_map


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = import_module(f".{_EXPORTS[name]}", __name__)
        # importing the submodule `augment` binds it here: that module, callable as the function (see augment.py)
        return globals().get(name, getattr(module, name))
    raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
