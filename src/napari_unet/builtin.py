"""Built-in models: model folders shipped inside the package (`builtin_models/<name>/`: config.json and
weights.safetensors, loading runs no code), used by name wherever a model folder is accepted.

A name and a path can collide: `nuclei` may be a built-in and a folder in the current directory. A model
folder at the path given wins (what you can see on disk is what you get, and `./nuclei` stays unambiguous);
`builtin:nuclei` always means the built-in. A file or folder of that name that is not a model folder does not
hide the built-in.

>>> "nuclei" in names()  # doctest: +SKIP
True
>>> resolve("builtin:nuclei").name  # doctest: +SKIP
'nuclei'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .modelfolder import CONFIG_FILE, WEIGHTS_FILE, is_model_folder

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin_models"
PREFIX = "builtin:"
HELD_OUT, SKIPPED = "held_out_", "skipped_"  # metadata training_data lists of images not trained on


def names() -> list[str]:
    """The names of the built-in models, sorted."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if not p.name.startswith(".") and is_model_folder(p))


def path(name: str) -> Path:
    """The folder of the built-in model `name` ("nuclei" or "builtin:nuclei")."""
    name = name.removeprefix(PREFIX)
    available = names()
    if name not in available:
        raise ValueError(f"no built-in model named {name!r}: the built-in models are {', '.join(available) or 'none'}")
    return BUILTIN_DIR / name


def shadowed(spec: str | Path) -> bool:
    """Whether `spec` names a built-in model but a local model folder of that name is used instead."""
    return isinstance(spec, (str, Path)) and str(spec) in names() and is_model_folder(spec)


def resolve(spec: str | Path) -> Path:
    """The folder a model argument refers to: `builtin:NAME` is the built-in; a model folder on disk is itself;
    otherwise the name of a built-in model is that model; anything else is returned as a path (whose loading
    then says what is wrong with it)."""
    text = str(spec)
    if text.startswith(PREFIX):
        return path(text)
    candidate = Path(spec)
    if candidate.is_file() and candidate.name in (CONFIG_FILE, WEIGHTS_FILE):
        candidate = candidate.parent
    if is_model_folder(candidate):
        return candidate
    if text in names():
        return path(text)
    return candidate


def describe(name: str) -> dict[str, Any]:
    """What `napari-unet models` shows of a built-in model, read from its config.json (without loading weights):
    name, description, object_diameter (px), architecture, weights_bytes, training_data (images per set it was
    trained on), held_out (images per set kept out of training, for validation: the lists of metadata
    "training_data" named `held_out_<set>`, under `<set>`), citations, license. Lists named `skipped_*`
    (images left out, e.g. without any object) are neither."""
    folder = path(name)
    config = json.loads((folder / CONFIG_FILE).read_text())
    metadata = config.get("metadata", {})
    lists = {key: len(value) for key, value in metadata.get("training_data", {}).items() if isinstance(value, list)}
    held_out = {key.removeprefix(HELD_OUT): n for key, n in lists.items() if key.startswith(HELD_OUT)}
    counts = {key: n for key, n in lists.items() if not key.startswith((HELD_OUT, SKIPPED))}
    unet = config["unet"]
    return {
        "name": folder.name,
        "description": metadata.get("description", ""),
        "object_diameter": config.get("object_diameter", metadata.get("object_diameter")),
        "architecture": f"U-Net depth {unet.get('depth')}, {unet.get('base_channels')} base channels, "
        f"{unet.get('in_channels', 1)} input channel(s), {unet.get('padding', 'valid')} convolutions",
        "weights_bytes": (folder / WEIGHTS_FILE).stat().st_size,
        "training_data": counts,
        "held_out": held_out,
        "citations": list(metadata.get("citations", [])),
        "license": metadata.get("license"),
        "path": str(folder),
    }
