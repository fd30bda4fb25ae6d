"""Reader contributions: saved model folders (dropped onto the window) and microscopy images via napari_unet.io.

npe2's reader contract: `get_*_reader(path)` returns None when it cannot read `path` (napari then tries other
readers) or a function `read(path) -> list of layer data tuples`. A model folder holds no layer: its reader
loads the model into the viewer's session and the Segment dock and returns `[(None,)]`, napari's sentinel for
"read, nothing to add"; without a viewer there is nothing to load into and it returns `[]` ("no data").

napari imports this module to ask whether it can read a dropped file, so torch (through `modelfile`) is only
imported once a model folder is actually read.

napari's own reader claims every folder (npe2 lists each reader that accepts directories, whatever its filename
patterns), so a dropped folder opens napari's "Choose reader" dialog; `get_model_reader` then reads only a
napari-unet model folder (docs/plugin.md says what the user sees and how to skip the dialog).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.io import PILLOW_SUFFIXES, read_image, reading_notes
from napari_unet.metadata import PixelSize, StackSpacing, read_pixel_size, read_spacing
from napari_unet.modelfolder import CONFIG_FILE, FORMAT, WEIGHTS_FILE, config_format, is_model_folder
from napari_unet.pipeline import file_stem

from ._autosave import SIDECAR_SUFFIX, is_annotation_file
from ._layers import METADATA_KEY

PLUGIN = "napari-unet-2015"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
LayerData = tuple[Any, ...]
# the axes a file without them in its metadata opens with, by its number of dimensions (`read_image` guesses up
# to 3; napari has no way to give them), how the notification names them, and other axes it offers as an example
UNSAID_AXES = {
    4: ("TZYX", "T, Z, Y, X (time, depth, height, width)", "CZYX"),
    5: ("TZCYX", "T, Z, C, Y, X (time, depth, channels, height, width)", "TCZYX"),
}


def get_model_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """A reader for a napari-unet model folder (config.json + weights.safetensors), or for one of those two files
    in it; None for any other folder, such as one of images or another program's checkpoint with files of the
    same names (its config.json says another "format"). A config.json that is not JSON is claimed: `read_model`
    then says that the model folder is corrupted."""
    folder = _single(path)
    if folder is None:
        return None
    if folder.name in (CONFIG_FILE, WEIGHTS_FILE):
        folder = folder.parent
    if not is_model_folder(folder):
        return None
    try:
        return read_model if config_format(folder) == FORMAT else None
    except OSError:
        return None
    except ValueError:
        return read_model


def read_model(path: str | list[str]) -> list[LayerData]:
    """Load the model into the current viewer's session and show the Segment dock.

    A corrupted folder raises the ValueError of `load_model` (napari shows it to the user).
    """
    import napari
    from napari.utils.notifications import show_info

    from napari_unet.modelfile import load_model

    from ._state import session_for

    folder = _single(path)
    if folder is not None and folder.name in (CONFIG_FILE, WEIGHTS_FILE):
        folder = folder.parent
    viewer = napari.current_viewer()
    if viewer is not None and session_for(viewer).training:
        raise ValueError(
            f"cannot load {folder.name} while Fine-tune trains the session's model: stop the run (or wait for its "
            "end), then drop the model again"
        )
    bundle = load_model(folder)
    if viewer is None:
        return []
    session_for(viewer).use_loaded(bundle, folder)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    show_info(f"Model {folder.name} loaded: it is now the model of the Segment and Fine-tune docks")
    return [(None,)]


def get_image_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """A reader for TIFF and PNG files (one or several), with their axes read from the file's metadata."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file() for p in paths):
        return None
    return read_images


def read_images(path: str | list[str]) -> list[LayerData]:
    """Layers of each file: grey images as one layer, channels (C) as one layer per channel, an 8-bit colour
    picture (`is_colour_picture`: H&E histology, brightfield) as one rgb layer with its colours last (axes
    "YXC"), leading Z/T axes kept (the docks work plane by plane); our autosaved annotations
    (*.unet-labels.tif) as Labels, read into memory (they are painted on).

    A physical pixel size in the file (OME-TIFF, ImageJ or TIFF resolution tags) sets the layers' scale on Y
    and X, its Z step (`metadata.read_spacing`) the scale on Z, and their unit the layers' units
    (`calibrated_placement`); the pixel size is kept in the layer metadata (`pixel_size`), from where
    measurements take their units.

    Image files are read lazily: memory-mapped, or, compressed or tiled TIFFs, as dask arrays that decode only the
    strips or tiles napari draws (`io.read_image` with `lazy`).

    napari passes a list of several files only for **File > Open Files as Stack...** (`viewer.open(paths,
    stack=True)`; otherwise one path at a time): their layers are stacked along a new leading axis (`stack_layers`),
    lazily: a plane is read from its file when it is shown.
    """
    if isinstance(path, str) or len(path) == 1:
        return [file_layer(Path(path if isinstance(path, str) else path[0]))]
    return [stack_layers([file_layer(Path(p)) for p in path], [Path(p).name for p in path])]


def file_layer(file: Path) -> LayerData:
    """The layer of one file (`read_images`; channels are one layer data with a `channel_axis`). A 4-D or 5-D
    file without axes in its metadata (a plain numpy/tifffile save) opens as T, Z, Y, X or T, Z, C, Y, X
    (`UNSAID_AXES`), with a notification; napari has no way to say its axes, which `read_image` asks for."""
    try:
        image, axes = read_image(file, lazy=True)
    except ValueError as error:
        unsaid = [said for ndim, said in UNSAID_AXES.items() if f"guess the axes of a {ndim}-D array" in str(error)]
        if not unsaid:
            raise
        from napari.utils.notifications import show_info

        ((opened_as, in_words, example),) = unsaid
        image, axes = read_image(file, opened_as, lazy=True)
        show_info(
            f"{file.name}: its axes are not in the file; opened as {in_words}. If that is not what its axes "
            f"hold, save the file with ImageJ or OME axes (e.g. {example})"
        )
    for said in reading_notes(file, axes_option=None):  # axes guessed, extra series: say what was assumed
        from napari.utils.notifications import show_info

        show_info(f"{file.name}: {said}")
    # 'a.v2' for a.v2.tif, 'cells' for cells.ome.tif and for its annotations cells.ome.tif.unet-labels.tif
    name = file_stem(file.name.removesuffix(SIDECAR_SUFFIX)) or file.name
    pixel_size = read_pixel_size(file)
    scale = calibrated_placement(axes.replace("C", ""), pixel_size, read_spacing(file, pixel_size))
    if is_annotation_file(file):  # in memory and writable: they are painted on (a memory map is read-only)
        return np.array(image), {"name": f"{name} annotations", **scale}, "labels"
    info = {"axes": axes, "source": str(file)}
    if pixel_size is not None:
        info["pixel_size"] = pixel_size.to_dict()
    if is_colour_picture(file, image, axes):
        colours_last = axes.replace("C", "") + "C"
        image = np.moveaxis(image, axes.index("C"), -1)
        metadata = {METADATA_KEY: {**info, "axes": colours_last}}
        return image, {"name": name, "rgb": True, "metadata": metadata, **scale}, "image"
    if "C" in axes and image.shape[axes.index("C")] > 1:
        channel = axes.index("C")
        count = image.shape[channel]
        per_channel = axes.replace("C", "")
        metadata = [
            {METADATA_KEY: {**info, "axes": per_channel, "channel": i, "channels": count}} for i in range(count)
        ]
        kwargs = {"name": [f"{name} [{i}]" for i in range(count)], "channel_axis": channel, "metadata": metadata}
        return image, {**kwargs, **scale}, "image"
    if "C" in axes:  # a single channel: drop the axis
        image = np.take(image, 0, axis=axes.index("C"))
        axes = axes.replace("C", "")
    return image, {"name": name, "metadata": {METADATA_KEY: {**info, "axes": axes}}, **scale}, "image"


def stack_layers(layers: list[LayerData], names: list[str]) -> LayerData:
    """The layers of several files (`file_layer` of each, in order) stacked along a new leading axis: Z for
    files of single planes, T for Z stacks (files with a T axis are refused: T is the first axis). The files
    must give layers of one kind, shape and type; the first file's name, scale and metadata are kept, with a
    scale and unit of 1 pixel on the new axis. Images are stacked lazily (a dask array: a plane is read from its
    file when it is used, as napari's own reader does), labels in memory (they are painted on)."""
    data, kwargs, kind = layers[0]
    for (other, _, other_kind), name in zip(layers[1:], names[1:]):
        if other_kind != kind or other.shape != data.shape or other.dtype != data.dtype:
            raise ValueError(
                f"cannot open {names[0]} and {name} as a stack: they differ in kind, shape or data type "
                f"({kind} {data.shape} {data.dtype} against {other_kind} {other.shape} {other.dtype}); open them "
                "separately"
            )
    metadata = kwargs.get("metadata")
    infos = metadata if isinstance(metadata, list) else [metadata] if metadata else []
    axes = next((m[METADATA_KEY]["axes"] for m in infos if METADATA_KEY in m), "")
    if "T" in axes:
        raise ValueError(
            f"cannot open {names[0]} and the others as a stack: they are time series already (axes {axes}); "
            "open them separately"
        )
    stacked = {**kwargs, "metadata": _with_new_axis(metadata, "T" if "Z" in axes else "Z", len(layers))}
    if "channel_axis" in kwargs:
        stacked["channel_axis"] = kwargs["channel_axis"] + 1
    if "scale" in kwargs:
        stacked["scale"] = (1.0, *kwargs["scale"])
    if "units" in kwargs:
        stacked["units"] = ("pixel", *kwargs["units"])
    if kind == "labels":
        return np.stack([np.asarray(layer[0]) for layer in layers]), stacked, kind
    import dask.array as da

    return da.stack([_unread(layer[0]) for layer in layers]), stacked, kind


def _unread(data: Any) -> Any:
    """`data` (a file's layer data: a dask array, a memory-mapped or an in-memory array) as a dask array that reads
    nothing until it is sliced. Not `dask.array.from_array`, which copies a numpy array (a memmap: reads it all)
    and hashes its values."""
    import uuid

    import dask
    import dask.array as da

    if isinstance(data, da.Array):
        return data
    whole = dask.delayed(data, name=f"file-{uuid.uuid4().hex}", traverse=False)
    return da.from_delayed(whole, data.shape, dtype=data.dtype, meta=np.empty((0,) * data.ndim, data.dtype))


def _with_new_axis(metadata: Any, axis: str, files: int) -> Any:
    """Layer metadata (a dict, or a list of them for channels) with `axis` before the stored axes, and the number
    of files stacked (`stacked`: the layer is not its source file's data alone, whose annotations are its own)."""
    if isinstance(metadata, list):
        return [_with_new_axis(m, axis, files) for m in metadata]
    if not metadata or METADATA_KEY not in metadata:
        return metadata
    info = dict(metadata[METADATA_KEY])
    info["axes"] = axis + info.get("axes", "")
    info["stacked"] = files
    return {**metadata, METADATA_KEY: info}


def is_colour_picture(file: Path, image: Any, axes: str) -> bool:
    """Whether `image` (canonical `axes`, as `io.read_image` read it from `file`) is an 8-bit RGB(A) picture, to
    be shown as napari shows a photo (one rgb layer), not as channels: 3 or 4 uint8 channels that are a PNG's or
    JPEG's colours (`io.read_image` reads a grey one, R = G = B, as "YX"), or a TIFF's RGB samples stored last
    (tifffile's series axes end in "S", photometric RGB: cameras, slide scanners, Fiji's RGB Color). Channels
    the file names as such (ImageJ or OME axes, grey samples), stored as planes (what tifffile makes of a
    (3, H, W) array without metadata) or of 16 bits (fluorescence) are channels."""
    if "C" not in axes or image.shape[axes.index("C")] not in (3, 4) or image.dtype != np.uint8:
        return False
    if file.suffix.lower() in PILLOW_SUFFIXES:
        return True
    import tifffile

    try:
        with tifffile.TiffFile(file) as tif:
            samples_last = tif.series[0].axes.upper().endswith("S")
            photometric = tif.series[0].keyframe.photometric
    except Exception:  # noqa: BLE001  (read_image read it: a file tifffile cannot describe is left as channels)
        return False
    return samples_last and photometric == tifffile.PHOTOMETRIC.RGB


def calibrated_placement(axes: str, pixel_size: PixelSize | None, spacing: StackSpacing) -> dict[str, Any]:
    """Layer keywords that give an array of `axes` (canonical, without C) its physical size: the scale of Y and X
    from `pixel_size` (a `metadata.PixelSize`), of Z from the Z step of `spacing` (1 when it is not known), of T
    1 (one frame); the units, `pixel_size.unit` on the axes it sizes and pixels on the others (left out when
    napari does not know the unit). {} without a pixel size.

    >>> calibrated_placement("TZYX", PixelSize(0.5, 0.5, "um"), StackSpacing(z=2.0, t=5.0))
    {'scale': (1.0, 2.0, 0.5, 0.5), 'units': ('pixel', 'um', 'um', 'um')}
    """
    if pixel_size is None:
        return {}
    physical = {"Y": pixel_size.y, "X": pixel_size.x, "Z": spacing.z}
    placement: dict[str, Any] = {"scale": tuple(physical.get(a) or 1.0 for a in axes)}
    if _napari_knows(pixel_size.unit):
        placement["units"] = tuple(pixel_size.unit if physical.get(a) else "pixel" for a in axes)
    return placement


def _napari_knows(unit: str) -> bool:
    """Whether napari's unit registry (pint's) parses `unit`: a layer with a unit it does not know is refused."""
    import pint

    try:
        pint.get_application_registry().parse_expression(unit)
    except Exception:  # noqa: BLE001  (pint raises several kinds for a string that is not a unit)
        return False
    return True


def _single(path: str | list[str]) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path)
