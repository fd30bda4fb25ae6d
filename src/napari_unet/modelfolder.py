"""What makes a folder a napari-unet model folder, and which folders a model may be saved to, without importing
torch (napari asks the plugin's reader about every dropped path, and `modelfile`, which loads and saves models,
imports torch).

A model folder holds `config.json` (its "format" is `FORMAT`) and `weights.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT = "napari-unet-model"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def is_model_folder(path: str | Path) -> bool:
    """Whether `path` has a model folder's two files (their content is checked by `modelfile.load_model`)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def config_format(path: str | Path) -> Any:
    """The "format" that the config.json of the model folder `path` declares (None: none, or not a JSON object).
    Raises OSError when it cannot be read and ValueError when it is not JSON (a corrupted model folder)."""
    try:
        config = json.loads((Path(path) / CONFIG_FILE).read_bytes())
    except RecursionError as error:
        raise ValueError(f"{Path(path) / CONFIG_FILE} is nested too deeply to be a model's config") from error
    return config.get("format") if isinstance(config, dict) else None


def is_napari_unet_model(path: str | Path) -> bool:
    """Whether `path` is a model folder whose config says it is napari-unet's ("format"), not another program's
    folder with files of the same names (a Hugging Face checkpoint has config.json and weights.safetensors)."""
    if not is_model_folder(path):
        return False
    try:
        return config_format(path) == FORMAT
    except (OSError, ValueError):
        return False


def check_save_target(path: str | Path, name: str | None = None) -> bool:
    """Refuse (ValueError) to save a model to the folder `path` when that could replace what is not a napari-unet
    model: a folder that holds other files and no model, or another program's folder with files of the same names.
    Returns whether `path` holds a napari-unet model (saved over, its other files kept: `modelfile.save_model`);
    False for a path that does not exist yet or an empty folder. name: how the message calls `path` ("--out x")."""
    path = Path(path)
    name = name or str(path)
    if not path.exists():
        return False
    if is_model_folder(path):
        if not is_napari_unet_model(path):
            raise ValueError(
                f"{name} holds a config.json and weights.safetensors that are not a napari-unet model's (another "
                "program's, or a damaged config): choose a new path"
            )
        return True
    if not path.is_dir() or any(path.iterdir()):
        raise ValueError(f"{name} exists and is not a model folder (nor an empty folder); choose a new path")
    return False
