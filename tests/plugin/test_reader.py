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
    from napari_unet.channels import ChannelChoice
    from napari_unet.plugin._layers import LayerProblem

    as_grey = plane_stack(ch0, 1, viewer.layers, ChannelChoice(grey=True))  # the built-in model's choice
    np.testing.assert_array_equal(np.asarray(as_grey.plane(()))[0], channels[0])  # the chosen channel, not the mean
    np.testing.assert_array_equal(
        np.asarray(plane_stack(ch0, 1, viewer.layers, ChannelChoice((1,))).plane(()))[0], channels[1]
    )
    with pytest.raises(LayerProblem, match="channel 1 was chosen but layer 'stack' has 1 channel"):
        plane_stack(viewer.open(tmp_path / "stack.tif", plugin=PLUGIN)[0], 1, viewer.layers, ChannelChoice((1,)))

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


def test_a_4d_file_without_axes_opens_as_t_z_y_x_and_says_so(tmp_path, monkeypatch):
    """A plain tifffile save of (2, 5, 32, 40): the reader failed with "pass axes explicitly", which napari gives
    no way to do."""
    import napari.utils.notifications as notifications
    import tifffile

    shown = []
    monkeypatch.setattr(notifications, "show_info", shown.append)
    data = np.arange(2 * 5 * 32 * 40, dtype=np.uint16).reshape(2, 5, 32, 40)
    tifffile.imwrite(tmp_path / "tz.tif", data)
    ((image, kwargs, kind),) = get_image_reader(str(tmp_path / "tz.tif"))(str(tmp_path / "tz.tif"))
    assert kind == "image" and np.array_equal(np.asarray(image), data)
    assert kwargs["metadata"]["napari_unet"]["axes"] == "TZYX"
    assert any("opened as T, Z, Y, X" in text for text in shown)


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


# ---------------------------------------------------------------------------------------- model folders, dropped


def test_only_napari_unet_model_folders_are_claimed(tmp_path, tiny_bundle):
    """The model reader says None (napari then uses another reader) for a folder that is not a napari-unet model:
    one of images, or another program's checkpoint with files of the same names (Hugging Face: config.json and
    weights.safetensors)."""
    import json

    folder = save_model(tmp_path / "cells-model", tiny_bundle)
    images = tmp_path / "images"
    images.mkdir()
    write_tiff(images / "a.tif", np.zeros((8, 8), np.uint8), "YX")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (other / "weights.safetensors").write_bytes((folder / "weights.safetensors").read_bytes())

    assert get_model_reader(str(folder)) is read_model
    assert get_model_reader(str(folder / "weights.safetensors")) is read_model
    assert get_model_reader(str(images)) is None
    assert get_model_reader(str(other)) is None
    assert get_model_reader(str(other / "config.json")) is None
    (folder / "config.json").write_text("{ not json")  # our folder, corrupted: claimed, so that read_model says so
    assert get_model_reader(str(folder)) is read_model
    with pytest.raises(ValueError, match="corrupted"):
        read_model(str(folder))


def test_a_dropped_model_folder_asks_for_the_reader_and_a_dropped_config_loads_at_once(
    make_napari_viewer, tmp_path, tiny_bundle, monkeypatch
):
    """What docs/plugin.md tells the user. napari's own reader claims every folder, so a dropped folder opens
    napari's "Choose reader" dialog: it lists this plugin, choosing it loads the model, and "Remember this
    choice" makes the next drop of that folder load without the dialog. A model's config.json (or its weights)
    is read by this plugin alone: dropped, it loads the model without any question. `viewer.open(path,
    plugin=None)` is what a drop does (napari picks the reader); `viewer.open(path)` uses napari's own reader."""
    import os

    import napari.settings
    from napari._qt.dialogs import qt_reader_dialog
    from napari.errors import MultipleReaderError
    from napari.plugins import _npe2

    settings = napari.settings.NapariSettings(config_path=None)  # the remembered choices stay out of the user's file
    monkeypatch.setattr(napari.settings, "_SETTINGS", settings)
    first = save_model(tmp_path / "first", tiny_bundle)
    second = save_model(tmp_path / "second", tiny_bundle)
    viewer = make_napari_viewer()
    session = session_for(viewer)
    ours = _npe2.get_readers(str(first))[PLUGIN]
    assert ours == "U-Net, Ronneberger et al. 2015"  # the name the dialog shows, as docs/plugin.md says

    assert set(_npe2.get_readers(str(first / "config.json"))) == {PLUGIN}
    assert set(_npe2.get_readers(str(first / "weights.safetensors"))) == {PLUGIN}
    assert viewer.open(first / "config.json", plugin=None) == [] and session.model_path == first
    assert viewer.open(second / "weights.safetensors", plugin=None) == [] and session.model_path == second

    assert len(_npe2.get_readers(str(first))) > 1, "only our reader claims folders now: update docs/plugin.md"
    with pytest.raises(MultipleReaderError):
        viewer.open(first, plugin=None)
    with pytest.raises(OSError):
        viewer.open(first)  # napari's own reader, the default of viewer.open
    images = tmp_path / "images"
    images.mkdir()
    write_tiff(images / "a.tif", np.zeros((8, 8), np.uint8), "YX")
    with pytest.raises(ValueError, match="refused"):
        viewer.open(images, plugin=PLUGIN)

    offered = []

    def choose_ours_and_remember(dialog):
        offered.append([button.text() for button in dialog.reader_btn_group.buttons()])
        return ours, True

    monkeypatch.setattr(qt_reader_dialog.QtReaderDialog, "get_user_choices", choose_ours_and_remember)
    viewer.window._qt_viewer._qt_open([str(first)], stack=False)  # what a drop on the canvas calls
    assert len(offered) == 1 and ours in offered[0]
    assert session.model_path == first
    remembered = os.path.realpath(first) + os.sep
    assert settings.plugins.extension2reader == {remembered: PLUGIN}
    session.set_model(tiny_bundle, second)
    viewer.window._qt_viewer._qt_open([str(first)], stack=False)
    assert len(offered) == 1 and session.model_path == first, "remembered: loaded again without the dialog"


# ---------------------------------------------------------------------------------------- colour photos


def _photo(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """An 8-bit colour picture (..., H, W, 3) whose three colours differ (an H&E-like pink and purple)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, shape, dtype=np.uint8)
    pixels[..., 0] = np.maximum(pixels[..., 0], 120)
    return pixels


def test_colour_photos_open_as_one_rgb_layer(make_napari_viewer, tmp_path):
    """An 8-bit RGB(A) PNG or TIFF (colours interleaved, last: what cameras, slide scanners and Fiji's RGB
    Color save) opens as napari's reader opens it: one rgb layer of the pixels as stored, not one false-colour
    layer per colour; the PNG's alpha is dropped (as the docks read every image), the TIFF's kept. The
    layer's axes end in C, and the docks read its colours as 3 channels."""
    import tifffile

    photo = _photo((40, 50, 3))
    PILImage.fromarray(photo, "RGB").save(tmp_path / "he.png")
    alpha = np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])
    PILImage.fromarray(alpha, "RGBA").save(tmp_path / "he-alpha.png")
    tifffile.imwrite(tmp_path / "he.tif", photo, photometric="rgb")
    tifffile.imwrite(tmp_path / "he-alpha.tif", alpha, photometric="rgb", extrasamples=["unassalpha"])
    tifffile.imwrite(
        tmp_path / "fiji.tif", photo, imagej=True, photometric="rgb", resolution=(2, 2), metadata={"unit": "um"}
    )
    frames = _photo((2, 40, 50, 3), seed=1)
    tifffile.imwrite(tmp_path / "frames.tif", frames, photometric="rgb")

    viewer = make_napari_viewer()
    for name, pixels in [("he.png", photo), ("he-alpha.png", photo), ("he.tif", photo), ("he-alpha.tif", alpha)]:
        (layer,) = viewer.open(tmp_path / name, plugin=PLUGIN)
        assert layer.rgb, name
        np.testing.assert_array_equal(layer.data, pixels)
        assert layer.metadata["napari_unet"]["axes"] == "YXC" and tuple(layer.scale) == (1.0, 1.0)
        stack = plane_stack(layer, 3)
        assert stack.planes == [()]
        np.testing.assert_array_equal(np.asarray(stack.plane(())), np.moveaxis(photo, -1, 0))
    (fiji,) = viewer.open(tmp_path / "fiji.tif", plugin=PLUGIN)
    assert fiji.rgb and tuple(fiji.scale) == (0.5, 0.5) and fiji.metadata["napari_unet"]["pixel_size"]["x"] == 0.5
    (movie,) = viewer.open(tmp_path / "frames.tif", plugin=PLUGIN)
    assert movie.rgb and movie.ndim == 3 and plane_stack(movie, 3).planes == [(0,), (1,)]
    np.testing.assert_array_equal(movie.data, frames)


def test_channel_stacks_keep_one_layer_per_channel_even_with_three_8_bit_channels(make_napari_viewer, tmp_path):
    """Three 8-bit channels are not a photo when the file says they are channels (ImageJ or OME-TIFF axes, a
    TIFF whose samples are grey values), when they are stored as planes (tifffile's default for a (3, H, W)
    array), or when they are 16-bit (fluorescence cameras): one layer per channel, as before."""
    import tifffile

    planes = np.moveaxis(_photo((40, 50, 3)), -1, 0)
    write_tiff(tmp_path / "imagej.tif", planes, "CYX")
    tifffile.imwrite(tmp_path / "ome.ome.tif", planes, ome=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "grey-samples.tif", np.moveaxis(planes, 0, -1), photometric="minisblack")
    tifffile.imwrite(tmp_path / "planar.tif", planes, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "deep.tif", np.moveaxis(planes, 0, -1).astype(np.uint16) * 250, photometric="rgb")

    viewer = make_napari_viewer()
    for name in ("imagej.tif", "ome.ome.tif", "grey-samples.tif", "planar.tif", "deep.tif"):
        layers = viewer.open(tmp_path / name, plugin=PLUGIN)
        assert len(layers) == 3 and not any(layer.rgb for layer in layers), name
        assert [layer.data.shape for layer in layers] == [(40, 50)] * 3, name
    np.testing.assert_array_equal(viewer.layers["imagej [2]"].data, planes[2])


def test_an_rgb_photo_opened_by_the_reader_segments_as_its_luminance(make_napari_viewer, qtbot, tmp_path, tiny_bundle):
    """The Segment dock takes the reader's rgb layer: with *grey*, a grey model segments it as the image of its
    luminance (channels.RGB_TO_GREY), the labels at the photo's pixel size and shape."""
    from napari_unet.channels import ChannelChoice
    from napari_unet.plugin._segment import SegmentWidget
    from napari_unet.postprocess import probs_to_labels
    from napari_unet.synthetic import make_cells

    cells, _ = make_cells((96, 112), seed=2)
    purple = np.array([120, 60, 160], np.float32) / 255
    photo = (255 - np.clip(cells, 0, 1)[..., None] * (255 - 255 * purple)).astype(np.uint8)  # stained on white
    PILImage.fromarray(photo, "RGB").save(tmp_path / "stained.png")
    luminance, _ = ChannelChoice(grey=True).apply(np.moveaxis(photo, -1, 0), "CYX")

    viewer = make_napari_viewer()
    (layer,) = viewer.open(tmp_path / "stained.png", plugin=PLUGIN)
    assert layer.rgb
    widget = SegmentWidget(viewer, default_model=None)
    viewer.window.add_dock_widget(widget, name="Segment")
    session_for(viewer).set_model(tiny_bundle)
    widget.tile_spin.setValue(48)
    widget.channel_fields.grey.setChecked(True)
    widget.reset_choices()
    widget.image_combo.value = layer
    with qtbot.waitSignal(widget.segmented, timeout=60_000) as done:
        widget.run()
    labels = done.args[0]
    assert labels.shape == photo.shape[:2] and widget.labels_layer.data.shape == photo.shape[:2]
    probs = tiny_bundle.predict(luminance, tile_size=48, device="cpu")
    np.testing.assert_array_equal(labels, probs_to_labels(probs[1], widget.postprocess_config()))


def test_16_bit_colour_pngs_open_as_channels_with_all_their_bits(make_napari_viewer, tmp_path):
    """A 16-bit RGB PNG (fluorescence exported as colour) opened as one 8-bit rgb layer: Pillow keeps only the high
    byte of each value. It opens as 16-bit images are: one uint16 layer per channel, values as stored."""
    imagecodecs = pytest.importorskip("imagecodecs")

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, (20, 30, 3), dtype=np.uint16)
    (tmp_path / "cells.png").write_bytes(imagecodecs.png_encode(pixels))
    viewer = make_napari_viewer()
    layers = viewer.open(tmp_path / "cells.png", plugin=PLUGIN)
    assert len(layers) == 3 and not any(layer.rgb for layer in layers)
    for channel, layer in enumerate(layers):
        assert layer.data.dtype == np.uint16 and layer.name == f"cells [{channel}]"
        np.testing.assert_array_equal(layer.data, pixels[..., channel])


def test_an_ome_pixel_height_in_another_unit_still_gives_square_pixels(make_napari_viewer, tmp_path):
    import tifffile

    metadata = {"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm"}
    metadata |= {"PhysicalSizeY": 500.0, "PhysicalSizeYUnit": "nm"}
    tifffile.imwrite(tmp_path / "a.ome.tif", np.zeros((20, 30), np.uint16), ome=True, metadata=metadata)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(tmp_path / "a.ome.tif", plugin=PLUGIN)
    assert tuple(layer.scale) == (0.5, 0.5) and [str(u) for u in layer.units] == ["micrometer", "micrometer"]


def test_open_files_as_stack_gives_one_layer_with_a_new_axis(make_napari_viewer, tmp_path, cells):
    """File > Open Files as Stack... (viewer.open(paths, stack=True)) gave one layer per file with napari-unet's
    reader; the files are stacked along Z (T for Z stacks), with their calibration, and the docks see planes."""
    import tifffile

    from napari_unet.metadata import PixelSize, tiff_calibration
    from napari_unet.plugin._layers import stored_axes

    image, _ = cells
    calibration, metadata = tiff_calibration(PixelSize(0.5, 0.5, "um"), imagej=True)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"plane{i}.tif")
        tifffile.imwrite(paths[-1], (image * 1000 + i).astype(np.uint16), imagej=True, metadata=metadata, **calibration)
    viewer = make_napari_viewer()
    (layer,) = viewer.open([str(p) for p in paths], stack=True, plugin=PLUGIN)
    assert layer.data.shape == (3, *image.shape) and layer.name == "plane0"
    assert tuple(layer.scale) == (1.0, 0.5, 0.5) and stored_axes(layer) == "ZYX"
    np.testing.assert_array_equal(layer.data[2], (image * 1000 + 2).astype(np.uint16))
    assert plane_stack(layer, 1, viewer.layers).planes == [(0,), (1,), (2,)]

    zstack = tmp_path / "z.tif"
    tifffile.imwrite(zstack, np.stack([image] * 2).astype(np.float32), imagej=True, metadata={"axes": "ZYX"})
    (timeseries,) = viewer.open([str(zstack), str(zstack)], stack=True, plugin=PLUGIN)
    assert timeseries.data.shape == (2, 2, *image.shape) and stored_axes(timeseries) == "TZYX"

    tifffile.imwrite(tmp_path / "small.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(Exception, match="cannot open plane0.tif and small.tif as a stack"):
        viewer.open([str(paths[0]), str(tmp_path / "small.tif")], stack=True, plugin=PLUGIN)
