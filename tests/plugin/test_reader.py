"""Readers: a dropped model folder loads into the docks; microscopy files open as layers the docks accept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from napari_unet.io import write_tiff
from napari_unet.modelfile import save_model
from napari_unet.plugin._layers import plane_stack
from napari_unet.plugin._reader import PLUGIN, get_image_reader, get_model_reader, read_model
from napari_unet.plugin._state import session_for

pytestmark = pytest.mark.viewer


def test_a_model_folder_loads_into_the_session_and_opens_the_segment_dock(make_napari_viewer, tmp_path, tiny_bundle):
    folder = save_model(tmp_path / "cells-model", tiny_bundle)
    assert get_model_reader(str(tmp_path)) is None, "a folder without a model is not ours"
    assert get_model_reader(str(folder / "config.json")) is read_model
    viewer = make_napari_viewer()
    layers = viewer.open(folder, plugin=PLUGIN)
    assert layers == []
    session = session_for(viewer)
    assert session.model_path == folder and session.bundle.net.config.depth == 3
    assert "Segment" in " ".join(viewer.window.dock_widgets), list(viewer.window.dock_widgets)

    session.training = True  # a drop during a Fine-tune run was announced as loaded, then replaced at its end
    with pytest.raises(ValueError, match="while Fine-tune trains"):
        viewer.open(folder, plugin=PLUGIN)
    session.training = False

    (folder / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupted"):
        viewer.open(folder, plugin=PLUGIN)
    assert session.model_path == folder, "a corrupted folder leaves the session's model alone"


def test_without_a_viewer_the_model_reader_returns_no_data(tmp_path, tiny_bundle):
    folder = save_model(tmp_path / "model", tiny_bundle)
    assert read_model(str(folder)) == []


def test_microscopy_files_open_as_layers_the_docks_accept(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(0)
    channels = rng.integers(0, 60_000, (2, 40, 50), dtype=np.uint16)
    write_tiff(tmp_path / "two.tif", channels, "CYX")
    stack = rng.integers(0, 60_000, (3, 40, 50), dtype=np.uint16)
    write_tiff(tmp_path / "stack.tif", stack, "ZYX")
    grey = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    PILImage.fromarray(rgba, "RGBA").save(tmp_path / "grey.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert get_image_reader(str(tmp_path / "notes.txt")) is None

    viewer = make_napari_viewer()
    ch0, ch1 = viewer.open(tmp_path / "two.tif", plugin=PLUGIN)
    np.testing.assert_array_equal(ch1.data, channels[1])
    assert ch0.data.dtype == np.uint16 and ch0.colormap.name != ch1.colormap.name  # a composite, not a slider
    both = plane_stack(ch0, 2, viewer.layers)
    np.testing.assert_array_equal(np.asarray(both.plane(())), channels)
    assert plane_stack(ch1, 1, viewer.layers).planes == [()]

    (z,) = viewer.open(tmp_path / "stack.tif", plugin=PLUGIN)
    assert plane_stack(z, 1).planes == [(0,), (1,), (2,)]
    (png,) = viewer.open(tmp_path / "grey.png", plugin=PLUGIN)
    assert not png.rgb and png.data.shape == (40, 50)
    np.testing.assert_array_equal(png.data, grey)


def test_a_file_whose_axes_were_guessed_says_so(tmp_path, monkeypatch):
    """A stack of 3 planes saved by tifffile without metadata is stored as planar RGB: dropped on napari it
    opens as 3 channels, with a notification saying so and how to keep its planes."""
    import napari.utils.notifications as notifications
    import tifffile

    shown = []
    monkeypatch.setattr(notifications, "show_info", shown.append)
    tifffile.imwrite(
        tmp_path / "z3.tif", np.zeros((3, 16, 16), np.uint16) + np.arange(3)[:, None, None].astype(np.uint16)
    )
    layers = get_image_reader(str(tmp_path / "z3.tif"))(str(tmp_path / "z3.tif"))
    assert len(layers) == 1 and layers[0][1]["channel_axis"] == 0
    assert shown == [
        "z3.tif: its axes are not in the file: read as CYX (3 channels) by guess; save it with its axes "
        "(ImageJ or OME-TIFF) if these are planes"
    ]


def test_layer_names_keep_the_dots_of_the_file_name(make_napari_viewer, tmp_path):
    """a.v2.tif and a.v3.tif opened as 'a' and 'a [1]' (the name cut at its first dot)."""
    rng = np.random.default_rng(0)
    for name in ("a.v2.tif", "a.v3.tif", "cells.ome.tif"):
        write_tiff(tmp_path / name, rng.integers(0, 255, (20, 30), dtype=np.uint8), "YX")
    viewer = make_napari_viewer()
    layers = [viewer.open(tmp_path / name, plugin=PLUGIN)[0] for name in ("a.v2.tif", "a.v3.tif", "cells.ome.tif")]
    assert [layer.name for layer in layers] == ["a.v2", "a.v3", "cells"]


def test_calibrated_files_open_with_their_z_step_and_units(make_napari_viewer, tmp_path):
    """Y and X take the pixel size, Z the Z step (it was left at 1), T stays 1 frame; the layers' units are the
    pixel size's on the axes it sizes, pixels elsewhere: for ImageJ and OME-TIFF files, channels split into
    layers, and our annotations."""
    import tifffile

    from napari_unet.metadata import PixelSize, StackSpacing

    um, pixel = "micrometer", "pixel"
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 60_000, (3, 2, 20, 30), dtype=np.uint16)
    imagej = {"axes": "ZCYX", "spacing": 2.0, "unit": "um", "finterval": 5.0}
    tifffile.imwrite(tmp_path / "zc.tif", stack, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata=imagej)
    movie = {"axes": "TZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1500.0}
    movie |= {"PhysicalSizeZUnit": "nm", "TimeIncrement": 5.0}
    tifffile.imwrite(tmp_path / "movie.ome.tif", stack, ome=True, metadata=movie)
    annotations = tmp_path / "zc.tif.unet-labels.tif"
    spacing = StackSpacing(z=2.0)
    write_tiff(annotations, np.ones((3, 20, 30), np.int32), "ZYX", pixel_size=PixelSize(0.5, 0.5), spacing=spacing)
    write_tiff(tmp_path / "flat.tif", stack[0, 0], "YX")

    viewer = make_napari_viewer()
    for layer in viewer.open(tmp_path / "zc.tif", plugin=PLUGIN):
        assert tuple(layer.scale) == (2.0, 0.5, 0.5)
        assert [str(u) for u in layer.units] == [um, um, um]
    (layer,) = viewer.open(tmp_path / "movie.ome.tif", plugin=PLUGIN)
    assert tuple(layer.scale) == (1.0, 1.5, 0.25, 0.25)
    assert [str(u) for u in layer.units] == [pixel, um, um, um]
    (labels,) = viewer.open(annotations, plugin=PLUGIN)
    assert tuple(labels.scale) == (2.0, 0.5, 0.5) and [str(u) for u in labels.units] == [um, um, um]
    (flat,) = viewer.open(tmp_path / "flat.tif", plugin=PLUGIN)
    assert tuple(flat.scale) == (1.0, 1.0) and [str(u) for u in flat.units] == [pixel, pixel]


def test_a_unit_napari_does_not_know_still_opens_with_its_scale():
    from napari_unet.metadata import PixelSize, StackSpacing
    from napari_unet.plugin._reader import calibrated_placement

    placement = calibrated_placement("ZYX", PixelSize(0.5, 0.5, "parsec"), StackSpacing(z=1.0))
    assert placement["units"] == ("parsec",) * 3  # pint knows it
    assert calibrated_placement("YX", PixelSize(0.5, 0.5, "blorps"), StackSpacing()) == {"scale": (0.5, 0.5)}
    assert calibrated_placement("TYX", None, StackSpacing(t=5.0)) == {}
