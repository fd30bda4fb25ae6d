"""OME-Zarr labels out: read back by `read_input` with their axes and by `read_pixel_size` with their scale."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.metadata import PixelSize, read_pixel_size
from napari_unet.ome_zarr import read_zarr, write_ome_zarr
from napari_unet.pipeline import read_input


def test_stack_round_trip_with_and_without_pixel_size(tmp_path):
    labels = np.random.default_rng(0).integers(0, 9, (3, 40, 50)).astype(np.int32)
    path = write_ome_zarr(tmp_path / "movie_labels.ome.zarr", labels, "TYX", PixelSize(0.5, 0.25, "um"), chunk=16)
    back, axes = read_input(path)
    assert axes == "TYX" and back.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(back), labels)
    assert read_pixel_size(path) == PixelSize(0.5, 0.25, "um")
    plain = write_ome_zarr(tmp_path / "plain.ome.zarr", labels[0], "YX")
    assert read_input(plain)[1] == "YX" and read_pixel_size(plain) is None
    write_ome_zarr(path, labels[:1], "TYX")  # an existing store is replaced
    assert read_input(path)[0].shape == (1, 40, 50)
    assert read_zarr(path, "ZYX")[1] == "ZYX"  # given axes win over the store's


def test_an_interrupted_write_leaves_the_old_store_and_no_temporary(tmp_path, monkeypatch):
    """Ctrl-C mid-write left `.x.ome.zarr.<pid>.partial`, which no later write removed; a replacement killed
    between its renames hid the old store as `.x.ome.zarr.<pid>.old` for good. The stores now go through
    `io.temporary_sibling` / `replace_folder` like every other output."""
    from test_validation import dead_pid

    import napari_unet.ome_zarr as ome_zarr

    path = tmp_path / "x.ome.zarr"
    write_ome_zarr(path, np.full((2, 8, 8), 7, np.int32), "ZYX")

    class Interrupted:
        shape, dtype, ndim = (2, 8, 8), np.dtype(np.int32), 3

        def __getitem__(self, index):
            raise KeyboardInterrupt

    try:
        write_ome_zarr(path, Interrupted(), "ZYX")
    except KeyboardInterrupt:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.zarr"]
    assert (np.asarray(read_zarr(path)[0]) == 7).all()

    # the state a kill between the two renames leaves, and a killed writer's temporary: both dealt with
    (path).rename(tmp_path / f".x.ome.zarr.{dead_pid()}.old.tmp")
    (tmp_path / f".x.ome.zarr.{dead_pid()}.abc.tmp").mkdir()
    monkeypatch.setattr(ome_zarr, "_write_store", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    try:
        write_ome_zarr(path, np.zeros((2, 8, 8), np.int32), "ZYX")
    except OSError:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.zarr"]
    assert (np.asarray(read_zarr(path)[0]) == 7).all(), "the old store is back"


def test_chunk_keys_are_nested_with_slashes_as_ngff_asks(tmp_path):
    """NGFF 0.4 stores are zarr format 2 with dimension_separator "/": chunk (t, y, x) is the file `0/t/y/x`.
    `write_ome_zarr` (`predict --zarr`) wrote zarr's default "." keys (`0/t.y.x`), unlike the distributed outputs."""
    import json

    labels = np.arange(2 * 40 * 50, dtype=np.int32).reshape(2, 40, 50)
    path = write_ome_zarr(tmp_path / "x.ome.zarr", labels, "TYX", chunk=16)
    meta = json.loads((path / "0" / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["dimension_separator"] == "/" and meta["chunks"] == [1, 16, 16]
    files = sorted(str(p.relative_to(path / "0")) for p in (path / "0").rglob("*") if p.is_file())
    chunks = [f for f in files if not f.startswith(".")]
    assert chunks == [f"{t}/{y}/{x}" for t in (0, 1) for y in range(3) for x in range(4)]  # 2 x 3 x 4 chunks
    np.testing.assert_array_equal(np.asarray(read_zarr(path)[0]), labels)


def test_z_step_and_frame_interval_are_the_z_and_t_scales(tmp_path):
    """NGFF 0.4 `coordinateTransformations`: z gets the Z step in the pixel size's unit, t the frame interval in
    seconds, each axis its unit; `read_pixel_size` and `read_spacing` give them back. Without them z and t stay 1,
    without a unit."""
    import zarr

    from napari_unet.metadata import StackSpacing, read_spacing

    labels = np.arange(2 * 3 * 8 * 8, dtype=np.int32).reshape(2, 3, 8, 8)
    size, spacing = PixelSize(0.5, 0.25, "um"), StackSpacing(z=2.0, t=30.0)
    path = write_ome_zarr(tmp_path / "stack.ome.zarr", labels, "TZYX", size, spacing)
    (multiscale,) = zarr.open_group(str(path), mode="r").attrs["multiscales"]
    assert multiscale["axes"] == [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert multiscale["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [30.0, 2.0, 0.5, 0.25]}
    ]
    assert read_pixel_size(path) == size and read_spacing(path, size) == spacing
    np.testing.assert_array_equal(np.asarray(read_input(path)[0]), labels)

    nm = PixelSize(500.0, 250.0, "nm")
    assert read_spacing(write_ome_zarr(tmp_path / "nm.ome.zarr", labels, "TZYX", nm, StackSpacing(z=2000.0)), nm) == (
        StackSpacing(z=2000.0)
    )
    plain = write_ome_zarr(tmp_path / "plain.ome.zarr", labels, "TZYX", size)
    (multiscale,) = zarr.open_group(str(plain), mode="r").attrs["multiscales"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 0.5, 0.25]
    assert [a.get("unit") for a in multiscale["axes"]] == [None, None, "micrometer", "micrometer"]
    assert read_spacing(plain, size) == StackSpacing()
    # a frame interval needs no pixel size; a Z step is a length in the pixel size's unit, none without it
    movie = write_ome_zarr(tmp_path / "movie.ome.zarr", labels, "TZYX", None, spacing)
    assert read_pixel_size(movie) is None and read_spacing(movie, None) == StackSpacing(t=30.0)


@pytest.mark.parametrize("axes", ["YX", "CYX"])
def test_whole_and_block_wise_stores_describe_their_axes_alike(tmp_path, axes):
    """`predict --zarr` (`write_ome_zarr`) and a distributed run's block-wise outputs (`ngff_attributes`) build
    their `multiscales` in one place: the same axes, units and scale for the same pixel size."""
    import zarr

    pytest.importorskip("distributed", reason="needs dask.distributed: pip install 'napari-unet-2015[distributed]'")
    from napari_unet.distributed.omezarr import ngff_attributes, ngff_pixel_size

    size = PixelSize(0.5, 0.25, "nm")
    array = np.zeros((3, 8, 8) if axes == "CYX" else (8, 8), np.uint8)
    path = write_ome_zarr(tmp_path / "x.ome.zarr", array, axes, size)
    written = zarr.open_group(str(path), mode="r").attrs["multiscales"]
    assert written == ngff_attributes("x.ome.zarr", axes, *ngff_pixel_size(size), label=False)["multiscales"]


def test_a_file_or_a_folder_of_other_files_is_never_replaced(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "data.csv").write_text("x")
    (tmp_path / "file.zarr").write_text("precious")
    for path, what in ((tmp_path / "notes", "a folder that is not"), (tmp_path / "file.zarr", "a file, not")):
        with pytest.raises(ValueError, match=f"{what} an OME-Zarr store"):
            write_ome_zarr(path, np.zeros((4, 4), np.uint8), "YX")
    assert (tmp_path / "notes" / "data.csv").read_text() == "x" and (tmp_path / "file.zarr").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    store = write_ome_zarr(tmp_path / "empty", np.zeros((4, 4), np.uint8), "YX")  # empty, or a store: written
    write_ome_zarr(store, np.ones((4, 4), np.uint8), "YX")
    assert read_zarr(store)[0].compute().min() == 1


@pytest.mark.parametrize("axes", ["ZCYX", "TZCYX"])
def test_axes_are_stored_time_then_channel_then_space_as_ngff_asks(tmp_path, axes):
    """NGFF 0.4 orders the axes time, channel, space (T, C, Z, Y, X); a Z-stack with channels was stored in the
    package's own order, T, Z, C, Y, X, which OME-Zarr readers reject. The store holds the data transposed to
    match, and reading it back gives the package's order again."""
    import json

    import zarr

    shape = {"T": 2, "Z": 3, "C": 2, "Y": 8, "X": 9}
    labels = np.arange(np.prod([shape[a] for a in axes]), dtype=np.int32).reshape([shape[a] for a in axes])
    path = write_ome_zarr(tmp_path / "x.ome.zarr", labels, axes, PixelSize(0.5, 0.5, "um"))
    (multiscale,) = json.loads((path / ".zattrs").read_text())["multiscales"]
    stored = "".join(a["name"] for a in multiscale["axes"]).upper()
    assert stored == axes.replace("ZC", "CZ")
    types = [a["type"] for a in multiscale["axes"]]
    assert types == sorted(types, key=["time", "channel", "space"].index)
    array = np.asarray(zarr.open_group(str(path), mode="r")["0"])
    np.testing.assert_array_equal(array, np.moveaxis(labels, axes.index("C"), axes.index("Z")))
    back, back_axes = read_zarr(path)
    assert back_axes == axes
    np.testing.assert_array_equal(np.asarray(back), labels)
    assert read_pixel_size(path) == PixelSize(0.5, 0.5, "um")


def ngff_image(group, data: np.ndarray, axes: str, paths: tuple[str, ...]) -> None:
    """An NGFF 0.4 image in the zarr `group`: its `multiscales` naming the datasets `paths` (the first full
    resolution, each next one halved in Y and X), as other writers lay them out."""
    for level, name in enumerate(paths):
        step = 2**level
        group.create_array(name, data=np.ascontiguousarray(data[..., ::step, ::step]))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a.lower(), "type": "channel" if a == "C" else "space"} for a in axes],
            "datasets": [{"path": name} for name in paths],
        }
    ]


def test_other_writers_layouts_are_read_at_their_full_resolution(tmp_path):
    """The audit's cases: the dataset path of `multiscales` was ignored (array "0" was opened, where other
    writers name the levels "s0", "s1"), and a bioformats2raw layout (bfconvert, QuPath: the image is the group
    "0" of the root, its array "0/0") failed, "0" being a group."""
    import zarr

    image = np.arange(2 * 24 * 32, dtype=np.uint16).reshape(2, 24, 32)
    levels = zarr.open_group(str(tmp_path / "levels.zarr"), mode="w", zarr_format=2)
    ngff_image(levels, image, "CYX", ("s0", "s1"))
    back, axes = read_input(tmp_path / "levels.zarr")
    assert axes == "CYX" and np.array_equal(np.asarray(back), image)

    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    root.create_group("OME").attrs["series"] = ["0"]
    ngff_image(root.create_group("0"), image[None, :, None], "TCZYX", ("0", "1"))  # as bioformats2raw writes
    back, axes = read_input(tmp_path / "b2r.zarr")
    assert axes == "TZCYX" and np.array_equal(np.asarray(back)[0, 0], image)
    not_an_image = zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=2)
    not_an_image.create_group("0")
    with pytest.raises(ValueError, match="without an array '0'"):
        read_input(tmp_path / "other.zarr")


def test_the_pixel_size_of_a_bioformats2raw_layout_or_a_store_of_any_name_is_read(tmp_path):
    """The pixel size and Z step were read only from a store named *.zarr, at its root's attributes: a
    bioformats2raw layout (the image is the group "0") and a store of another name lost their calibration."""
    import zarr

    from napari_unet.metadata import PixelSize, read_pixel_size, read_spacing

    for name in ("b2r.zarr", "b2r_store"):
        root = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=2)
        root.create_group("OME").attrs["series"] = ["0"]
        image = root.create_group("0")
        ngff_image(image, np.zeros((3, 8, 8), np.uint16), "ZYX", ("0",))
        multiscales = image.attrs["multiscales"]
        for axis in multiscales[0]["axes"]:
            axis["unit"] = "micrometer"
        multiscales[0]["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [2.0, 0.5, 0.25]}]
        image.attrs["multiscales"] = multiscales
        assert read_pixel_size(tmp_path / name) == PixelSize(0.5, 0.25, "µm")
        assert read_spacing(tmp_path / name, PixelSize(0.5, 0.25, "µm")).z == 2.0


def test_an_array_inside_a_store_is_an_input_whatever_its_name(tmp_path):
    """The audit's case: `slide.zarr/0` (the array itself) was taken for a folder of images: "no input image
    files"."""
    from napari_unet.pipeline import list_inputs

    image = np.random.default_rng(0).integers(0, 900, (30, 40)).astype(np.uint16)
    store = write_ome_zarr(tmp_path / "slide.zarr", image, "YX")
    assert list_inputs([store / "0"])[0] == [store / "0"]
    back, axes = read_input(store / "0")
    assert axes == "YX" and np.array_equal(np.asarray(back), image)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no input image files"):
        list_inputs([tmp_path / "notes"])  # a folder of other things is still a folder


def test_a_store_replaced_under_its_name_has_another_identity(tmp_path):
    from napari_unet.pipeline import input_identity

    path = write_ome_zarr(tmp_path / "a.zarr", np.ones((30, 40), np.uint16), "YX")
    before = input_identity(path)
    np.asarray(read_input(path)[0])  # reading it changes nothing
    assert input_identity(path) == before
    write_ome_zarr(path, np.full((30, 40), 2, np.uint16), "YX")  # the same shape and metadata, other data
    assert input_identity(path) != before
    assert input_identity(tmp_path / "missing.zarr") is None


def test_predict_refuses_the_stale_labels_of_a_replaced_store(tmp_path, capsys):
    """The audit's case: a `.zarr` input had no identity (None for folders), so a rerun on a store replaced
    since kept its old labels, where the docs promise that stale labels are never kept for new data."""
    import torch

    from napari_unet.cli import main
    from napari_unet.model import UNet, UNetConfig
    from napari_unet.modelfile import ModelBundle, save_model
    from napari_unet.synthetic import make_cells

    torch.manual_seed(0)
    model = save_model(tmp_path / "tiny.model", ModelBundle(UNet(UNetConfig(depth=2, base_channels=4))))
    path, out = tmp_path / "a.zarr", tmp_path / "out"
    write_ome_zarr(path, (make_cells((48, 48), seed=1)[0] * 1000).astype(np.uint16), "YX")
    command = ["predict", str(model), str(path), "--out", str(out), "--device", "cpu", "-q"]
    assert main(command) == 0
    assert main(command) == 0 and "1 skipped" in capsys.readouterr().out  # unchanged: skipped
    write_ome_zarr(path, (make_cells((48, 48), seed=2)[0] * 1000).astype(np.uint16), "YX")
    assert main(command) == 2
    assert "was segmented from another version of" in capsys.readouterr().err
    assert main([*command, "--overwrite"]) == 0


@pytest.mark.parametrize("axes", ["YX", "TZCYX"])
def test_an_array_inside_a_store_keeps_the_axes_and_pixel_size_of_its_dataset(tmp_path, axes):
    """The review's case: `slide.zarr/0` (the docs' own example) lost the pixel size and had its axes guessed: an
    array read on its own now takes the axes and the scale of the dataset its parent's multiscales name it."""
    import zarr

    image = np.random.default_rng(0).integers(0, 900, (2, 1, 1, 32, 48)[-len(axes) :]).astype(np.uint16)
    store = write_ome_zarr(tmp_path / "slide.zarr", image, axes, PixelSize(0.5, 0.25, "um"))
    back, found = read_input(store / "0")
    assert found == read_input(store)[1] == axes and np.array_equal(np.asarray(back), image)
    assert read_pixel_size(store / "0") == read_pixel_size(store) == PixelSize(0.5, 0.25, "um")
    group = zarr.open_group(str(store), mode="r+")  # a second level, halved in Y and X: its own scale
    group.create_array("1", data=np.ascontiguousarray(group["0"][..., ::2, ::2]))
    multiscales = group.attrs["multiscales"]
    level = dict(multiscales[0]["datasets"][0])
    level["path"], level["coordinateTransformations"] = (
        "1",
        [{"type": "scale", "scale": [*[1.0] * (len(axes) - 2), 1.0, 0.5]}],
    )
    multiscales[0]["datasets"].append(level)
    group.attrs["multiscales"] = multiscales
    assert read_input(store / "1")[1] == axes
    assert read_pixel_size(store / "1") == PixelSize(1.0, 0.5, "um")


def test_an_array_inside_a_store_names_its_outputs_after_the_store(tmp_path):
    """Session 23's leftover: `slide.zarr/0` wrote `0_labels.*`, so the arrays of two slides given together were
    refused as writing to the same files (and a lone one's outputs did not say which slide they came from)."""
    from napari_unet.pipeline import base_name, check_distinct_names, predict_output_names

    image = np.random.default_rng(0).integers(0, 900, (30, 40)).astype(np.uint16)
    first = write_ome_zarr(tmp_path / "first.ome.zarr", image, "YX")
    second = write_ome_zarr(tmp_path / "second.zarr", image, "YX")
    assert base_name(first / "0") == "first_0" and base_name(second / "0") == "second_0"
    assert base_name(first) == "first" and base_name(tmp_path / "cells.tif") == "cells"  # unchanged
    check_distinct_names([first / "0", second / "0"], tmp_path / "out")  # no longer both `0_labels.*`
    assert predict_output_names(first / "0")[0] == "first_0_labels.tif"


def test_an_arrays_name_is_the_same_from_anywhere_and_ignores_plain_folders(tmp_path, monkeypatch):
    """The review's cases: `0` or `../0` given from inside the store named the outputs `_0` and `_.._0`, and a
    plain folder named `project.zarr` around the store came into the name."""
    from napari_unet.pipeline import base_name

    image = np.zeros((30, 40), np.uint16)
    store = write_ome_zarr(tmp_path / "project.zarr" / "slide.zarr", image, "YX")
    assert base_name(store / "0") == "slide_0"  # project.zarr holds no zarr metadata: a plain folder
    monkeypatch.chdir(store)
    assert base_name("0") == "slide_0"
    monkeypatch.chdir(store / "0")
    assert base_name("../0") == "slide_0"
