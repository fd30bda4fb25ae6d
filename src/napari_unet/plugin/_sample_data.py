"""Sample data contribution: a synthetic field of touching nuclei with its instance labels."""

from __future__ import annotations

from typing import Any

from napari_unet.synthetic import make_cells

LayerDataTuple = tuple[Any, dict[str, Any], str]


def sample_cells() -> list[LayerDataTuple]:
    """A 512x512 synthetic fluorescence image and its labels, as napari layer data tuples."""
    image, labels = make_cells((512, 512), seed=0)
    return [
        (image, {"name": "cells (synthetic)"}, "image"),
        (labels, {"name": "cells labels"}, "labels"),
    ]
