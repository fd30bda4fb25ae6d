"""Reading what the files do not say: length-1 axes without a name, compressed TIFFs read lazily, zarr axes guessed."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.io import read_image, read_labels, reading_notes


def test_an_h_w_1_tiff_reads_as_one_plane_not_h_planes(tmp_path):
    """tifffile saves (H, W, 1) with series axes 'YXQ': it was read as H planes of W x 1 pixels ('ZYX')."""
    mask = np.zeros((64, 50, 1), np.uint8)
    mask[10:20, 5:30] = 255
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    image, axes = read_image(tmp_path / "mask.tif")
    assert axes == "YX" and image.shape == (64, 50) and isinstance(image, np.memmap)
    np.testing.assert_array_equal(image, mask[..., 0])
    assert reading_notes(tmp_path / "mask.tif") == []  # nothing was guessed
    np.testing.assert_array_equal(read_labels(tmp_path / "mask.tif"), mask[..., 0])
    image, axes = read_image(tmp_path / "mask.tif", "YXC")  # axes naming every stored dimension still work
    assert axes == "CYX" and image.shape == (1, 64, 50)


def test_a_stack_of_h_w_1_planes_reads_as_the_stack_and_says_what_it_guessed(tmp_path):
    """(2, H, W, 1), series axes 'QYXQ': 'cannot guess the axes of a 4-D array'. Now as the (2, H, W) it holds,
    guessed as a (2, H, W) file is, and the axes the note offers read it."""
    data = np.arange(2 * 16 * 12, dtype=np.uint16).reshape(2, 16, 12, 1)
    tifffile.imwrite(tmp_path / "two.tif", data)
    image, axes = read_image(tmp_path / "two.tif")
    assert axes == "CYX" and image.shape == (2, 16, 12)
    np.testing.assert_array_equal(image, data[..., 0])
    (said,) = reading_notes(tmp_path / "two.tif")
    assert "read as CYX (2 channels) by guess; give --axes ZYX if these are planes" in said
    image, axes = read_image(tmp_path / "two.tif", "ZYX")
    assert axes == "ZYX" and image.shape == (2, 16, 12)


def compressed_stack(path, planes=4):
    data = np.arange(planes * 32 * 24, dtype=np.uint16).reshape(planes, 32, 24)
    tifffile.imwrite(path, data, compression="zlib", imagej=True, metadata={"axes": "ZYX"})
    return data


def test_a_compressed_tiff_read_lazily_decodes_only_what_is_sliced(tmp_path):
    """read_image decoded a compressed TIFF whole (napari's reader, on the main thread); lazily, it is a dask
    array over tifffile's zarr store: a plane whose strips are damaged after opening fails only when it is read."""
    import dask.array as da

    data = compressed_stack(tmp_path / "z.tif")
    image, axes = read_image(tmp_path / "z.tif", lazy=True)
    assert isinstance(image, da.Array) and axes == "ZYX"
    np.testing.assert_array_equal(np.asarray(image), data)
    assert not isinstance(read_image(tmp_path / "z.tif")[0], da.Array), "in memory unless asked"

    with tifffile.TiffFile(tmp_path / "z.tif") as tif:
        strips = list(zip(tif.pages[3].dataoffsets, tif.pages[3].databytecounts))
    image, _ = read_image(tmp_path / "z.tif", lazy=True)
    with open(tmp_path / "z.tif", "r+b") as file:
        for offset, count in strips:
            file.seek(offset)
            file.write(b"\xff" * count)
    np.testing.assert_array_equal(np.asarray(image[:3]), data[:3])  # plane 3 is not decoded
    with pytest.raises(Exception):  # noqa: B017  (zlib's or zarr's error: what matters is that it is read only now)
        np.asarray(image[3])


def test_a_compressed_tiff_read_lazily_is_refused_at_once_when_cut_short_or_without_its_codec(tmp_path, monkeypatch):
    """Lazily read, a TIFF whose last strips are missing or whose codec is not installed would fail only when
    drawn or segmented: it is refused when read, as a TIFF read whole is."""
    compressed_stack(tmp_path / "full.tif")
    whole = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) - 200])
    with pytest.raises(ValueError, match="whose pixel data is cut short"):
        read_image(tmp_path / "cut.tif", lazy=True)

    def no_codec(*args, **kwargs):
        raise ValueError("<COMPRESSION.ADOBE_DEFLATE: 8> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(lambda page: no_codec))
    with pytest.raises(ValueError, match="needs a codec that is not installed"):
        read_image(tmp_path / "full.tif", lazy=True)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((3, 16, 16), "read as CYX (3 channels) by guess; give --axes ZYX if these are planes"),
        ((16, 16, 3), "read as CYX (3 channels) by guess; give --axes YXZ if these are planes"),
        ((7, 16, 16), "read as ZYX by guess; give --axes if that is wrong"),
    ],
)
def test_a_zarr_whose_axes_were_guessed_says_so_as_a_tiff_does(tmp_path, shape, expected):
    """`predict` noted guessed axes of a TIFF only: a (3, H, W) zarr was averaged to grey without a word. The axes
    offered describe the store as stored, as --axes does (a (16, 16, 3) array's channels last)."""
    import zarr

    from napari_unet.pipeline import read_input

    store = zarr.open(str(tmp_path / "plain.zarr"), mode="w", shape=shape, dtype="uint16", zarr_format=2)
    store[:] = 1
    (said,) = reading_notes(tmp_path / "plain.zarr")
    assert said == f"its axes are not in the file: {expected}"
    offered = expected.split("give --axes ")[1].split(" ")[0]
    if offered != "if":
        assert read_input(tmp_path / "plain.zarr", offered)[1] == "ZYX"
    assert "save it with its axes (OME-Zarr)" in reading_notes(tmp_path / "plain.zarr", axes_option=None)[0]


def test_a_store_of_any_name_and_layout_is_noted_as_it_is_read(tmp_path):
    """Any zarr store is an input (`ome_zarr.is_zarr_store`), read at its first multiscales dataset: the notes look
    at the same array (they looked only at names ending in .zarr, and at the array "0")."""
    import zarr

    root = zarr.open_group(str(tmp_path / "slide.zarr"), mode="w", zarr_format=2)
    root.create_array("s0", shape=(3, 16, 16), dtype="uint16")
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in "zyx"], "datasets": [{"path": "s0"}]}]
    assert reading_notes(tmp_path / "slide.zarr") == []  # its metadata names the axes of "s0"
    assert reading_notes(tmp_path / "slide.zarr" / "s0") == []  # the array inside: its dataset's axes
    plain = zarr.open(str(tmp_path / "plain_store"), mode="w", shape=(3, 16, 16), dtype="uint16", zarr_format=2)
    plain[:] = 1
    (said,) = reading_notes(tmp_path / "plain_store")  # a store not named .zarr, without metadata: guessed
    assert said.startswith("its axes are not in the file: read as CYX (3 channels) by guess")


def test_an_ome_zarr_or_a_2d_zarr_has_nothing_to_note(tmp_path):
    import zarr

    from napari_unet.ome_zarr import write_ome_zarr

    write_ome_zarr(tmp_path / "said.ome.zarr", np.ones((3, 16, 16), np.uint16), "CYX")
    assert reading_notes(tmp_path / "said.ome.zarr") == []
    zarr.open(str(tmp_path / "flat.zarr"), mode="w", shape=(16, 16), dtype="uint8", zarr_format=2)
    assert reading_notes(tmp_path / "flat.zarr") == []
    assert reading_notes(tmp_path / "missing.zarr") == []
