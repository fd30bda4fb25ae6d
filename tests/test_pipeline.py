"""Files in, files out: pairing by base name, split by image, test-time augmentation, plane-by-plane output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet import pipeline
from napari_unet.io import read_image, write_tiff
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle
from napari_unet.pipeline import (
    base_name,
    list_files,
    match_files,
    output_paths,
    read_input,
    read_settings,
    read_training_pair,
    segment_file,
    separate_outputs,
    split_by_image,
)
from napari_unet.postprocess import PostprocessConfig, probs_to_labels


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def bundle(seed: int = 0) -> ModelBundle:
    """A tiny model."""
    torch.manual_seed(seed)
    return ModelBundle(UNet(depth=3, base_channels=4, dropout=0.0), postprocess=PostprocessConfig(min_size=1))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("01.png", "01"),
        ("01.tif", "01"),
        ("a.b.TIFF", "a.b"),
        ("01_labels.tif", "01"),
        ("01_probs.ome.tif", "01"),
        ("img.zarr", "img"),
        ("slide.ome.zarr", "slide"),  # was "slide.ome": outputs slide.ome_labels.ome.zarr, then read as inputs
        ("big_labels.OME.zarr", "big"),
        ("_labels.tif", "_labels"),
        ("x_labels_labels.tif", "x_labels"),
    ],
)
def test_base_name(name, expected):
    assert base_name(name) == expected


def test_files_pair_by_base_name_whatever_their_extension(tmp_path):
    images = list_files(touch(tmp_path / "images", "01.png", "02.png", "03.png", ".hidden.png", "notes.txt"))
    labels = list_files(touch(tmp_path / "labels", "01.tif", "02_labels.tif", "04.tif"))
    assert [p.name for p in images] == ["01.png", "02.png", "03.png"]
    match = match_files(images, labels)
    assert [(a.name, b.name) for a, b in match.pairs] == [("01.png", "01.tif"), ("02.png", "02_labels.tif")]
    assert [p.name for p in match.unmatched_first] == ["03.png"]
    assert [p.name for p in match.unmatched_second] == ["04.tif"]


def test_two_single_files_pair_whatever_their_names(tmp_path):
    touch(tmp_path, "a.png", "b.tif")
    match = match_files(list_files(tmp_path / "a.png"), list_files(tmp_path / "b.tif"))
    assert match.pairs == [(tmp_path / "a.png", tmp_path / "b.tif")]


def test_matching_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file or folder"):
        list_files(tmp_path / "missing")
    with pytest.raises(ValueError, match="no label files in"):
        list_files(touch(tmp_path / "empty", "readme.md"), "label")
    images = list_files(touch(tmp_path / "i", "01.png", "02.png"))
    with pytest.raises(ValueError, match="share a base name"):
        match_files(images, list_files(touch(tmp_path / "l", "a.tif", "b.tif")))
    with pytest.raises(ValueError, match="the base name '01'"):
        match_files(list_files(touch(tmp_path / "d", "01.png", "01.tif")), images)


def test_a_preferred_suffix_settles_labels_against_probabilities(tmp_path):
    predictions = list_files(touch(tmp_path / "p", "01_labels.tif", "01_probs.tif", "02_labels.tif", "02_probs.tif"))
    truth = list_files(touch(tmp_path / "t", "01.png", "02.png"))
    for prefer in ("_labels", "_probs"):
        match = match_files(predictions, truth, prefer=prefer)
        assert [a.name for a, _ in match.pairs] == [f"01{prefer}.tif", f"02{prefer}.tif"]
    with pytest.raises(ValueError, match="base name"):
        match_files(predictions, truth)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.floats(0.01, 0.99), st.integers(0, 2**31))
def test_split_by_image_holds_out_whole_items_deterministically(n, fraction, seed):
    items = [f"image{i}" for i in range(n)]
    train, validation = split_by_image(items, fraction, seed)
    assert sorted(train + validation) == sorted(items) and not set(train) & set(validation)
    assert 1 <= len(validation) <= n - 1
    assert len(validation) == min(n - 1, max(1, round(fraction * n)))
    assert (train, validation) == split_by_image(items, fraction, seed)
    assert train == [x for x in items if x in train]  # order kept


def test_predicts_outputs_beside_their_images_are_not_inputs(tmp_path):
    """A folder predicted into itself: its next listing holds the outputs of its images, which are not inputs; a
    `_labels` file without its image, or beside another image's, is one."""
    folder = touch(
        tmp_path / "same",
        "a.png",
        "a_labels.tif",
        "a_probs.tif",
        "b.ome.tif",
        "b_labels.tif",
        "c_labels.tif",
        "d.tif",
        "d_labels.png",
    )
    (folder / "a_labels.ome.zarr").mkdir()
    (folder / "a_probs.ome.zarr").mkdir()
    listed = list_files(folder, zarr=True)
    inputs, outputs = separate_outputs(listed)
    assert [p.name for p in inputs] == ["a.png", "b.ome.tif", "c_labels.tif", "d.tif", "d_labels.png"]
    assert [p.name for p in outputs] == [
        "a_labels.ome.zarr",
        "a_labels.tif",
        "a_probs.ome.zarr",
        "a_probs.tif",
        "b_labels.tif",
    ]
    elsewhere = touch(tmp_path / "other", "a_labels.tif")
    assert separate_outputs([folder / "a.png", elsewhere / "a_labels.tif"])[1] == []  # not beside its image
    assert separate_outputs(outputs) == (outputs, [])  # without their images they are inputs
    assert pipeline.list_inputs([folder]) == (inputs, outputs)  # listed and separated in one call
    assert pipeline.describe_own_outputs(outputs, shown=2) == (
        "skipped 5 files that are predict's outputs of other inputs: a_labels.ome.zarr, a_labels.tif, ..."
    )


def test_the_settings_recorded_are_predicts_options():
    """What `predict` records (`output_settings` from its options) holds each option that changes the labels, as
    JSON reads it back, and the model by its weights: the record that `predict`, `--workers`/`--cluster` and the
    Batch dock compare before skipping an output."""
    from napari_unet.cli import build_parser
    from napari_unet.cli._args import channel_choice_option
    from napari_unet.cli.measure import pixel_size_option
    from napari_unet.cli.predict import _run_settings
    from napari_unet.modelfile import ModelBundle

    model = ModelBundle(bundle().net, postprocess=PostprocessConfig(min_size=1), object_diameter=17.0)
    post = PostprocessConfig(threshold=0.3)
    parse = build_parser().parse_args
    plain = parse(["predict", "cells.model", "a.tif", "--out", "out"])
    recorded = _run_settings(plain, model, post, channel_choice_option(plain), pixel_size_option(plain))
    assert recorded == {
        "model": "cells.model",
        "weights": pipeline.model_digest(model),
        "postprocess": json.loads(json.dumps(post.to_dict())),
        "diameter": "auto",
        "tta": False,
        "precision": "auto",
        "channels": model.channels.describe(),
        "axes": None,
        "pixel_size": None,
    }
    options = ["--tta", "--pixel-size", "0.5", "0.25", "--axes", "YX", "--diameter", "17", "--grey"]
    args = parse(["predict", "cells.model", "a.tif", "--out", "out", *options])
    recorded = _run_settings(args, model, post, channel_choice_option(args), pixel_size_option(args))
    assert (recorded["tta"], recorded["axes"], recorded["diameter"]) == (True, "YX", 17.0)
    assert recorded["pixel_size"] == "0.5 x 0.25 um" and recorded["channels"] != model.channels.describe()
    unscaled = ModelBundle(bundle().net)  # a model without an object diameter never rescales: no diameter
    assert _run_settings(args, unscaled, post, None, None)["diameter"] is None


def test_outputs_record_the_settings_they_were_written_with(tmp_path):
    image = np.random.default_rng(1).random((2, 36, 36)).astype(np.float32)
    settings = {"model": "tiny", "postprocess": {"threshold": 0.4}, "axes": None}
    outputs = output_paths(tmp_path / "stack.tif", tmp_path / "out", probabilities=True)
    list(segment_file(bundle(), image, "ZYX", outputs, device="cpu", settings=settings))
    assert read_settings(outputs.labels) == read_settings(outputs.probs) == settings
    assert read_image(outputs.labels)[1] == "ZYX"  # read back as before
    list(segment_file(bundle(), image, "ZYX", outputs, device="cpu"))
    assert read_settings(outputs.labels) is None  # nothing recorded
    (tmp_path / "garbage.tif").write_bytes(b"not a tiff")
    assert read_settings(tmp_path / "garbage.tif") is None and read_settings(tmp_path / "missing.tif") is None


def test_split_by_image_needs_two_images():
    with pytest.raises(ValueError, match="at least 2 images"):
        split_by_image(["only"], 0.5)


def test_segment_file_writes_each_plane_as_the_library_segments_it(tmp_path, monkeypatch):
    model = bundle(seed=2)
    stack = np.random.default_rng(2).random((3, 40, 36)).astype(np.float32)
    stack[1] *= 50  # planes are normalised separately
    write_tiff(tmp_path / "stack.tif", stack, "ZYX")
    image, axes = read_input(tmp_path / "stack.tif")
    assert isinstance(image, np.memmap)
    outputs = output_paths(tmp_path / "stack.tif", tmp_path / "out", probabilities=True)
    post = PostprocessConfig(threshold=0.45, min_size=2)
    done = list(segment_file(model, image, axes, outputs, postprocess=post, device="cpu"))
    assert [(d.index, d.total) for d in done] == [(0, 3), (1, 3), (2, 3)]
    labels, label_axes = read_image(outputs.labels)
    probs, probs_axes = read_image(outputs.probs)
    assert (label_axes, probs_axes) == ("ZYX", "ZYX")
    assert labels.dtype == np.int32 and probs.dtype == np.float32
    for z in range(3):
        expected = model.predict(stack[z], device="cpu")[1]
        np.testing.assert_allclose(probs[z], expected, atol=1e-6)
        np.testing.assert_array_equal(labels[z], probs_to_labels(expected, post))
        assert done[z].objects == labels[z].max()
    # a plane too large for memory goes through a temporary memory-mapped file: same result
    monkeypatch.setattr(pipeline, "LARGE_OUTPUT_BYTES", 0)
    again = output_paths(tmp_path / "stack.tif", tmp_path / "again", probabilities=True)
    list(segment_file(model, image, axes, again, postprocess=post, device="cpu"))
    np.testing.assert_array_equal(read_image(again.labels)[0], labels)
    # with test-time augmentation, also through the memory-mapped file
    list(segment_file(model, image, axes, again, postprocess=post, device="cpu", tta=True))
    np.testing.assert_allclose(
        read_image(again.probs)[0][1], model.predict(stack[1], device="cpu", tta=True)[1], atol=1e-6
    )


def test_a_zarr_array_is_read_lazily_with_its_axes(tmp_path):
    import dask.array as da
    import zarr

    data = np.random.default_rng(3).random((30, 20, 2)).astype(np.float32)
    array = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=data.shape, chunks=(10, 10, 2), dtype="f4")
    array[:] = data
    image, axes = read_input(tmp_path / "a.zarr", axes="YXC")
    assert axes == "CYX" and isinstance(image, da.Array)
    np.testing.assert_array_equal(np.asarray(image), np.moveaxis(data, -1, 0))
    assert list_files(tmp_path, zarr=True) == [tmp_path / "a.zarr"]


def test_training_pairs_must_have_one_shape(tmp_path):
    write_tiff(tmp_path / "image.tif", np.random.default_rng(0).random((20, 30)).astype(np.float32), "YX")
    write_tiff(tmp_path / "labels.tif", np.zeros((20, 31), np.uint16), "YX")
    write_tiff(tmp_path / "good.tif", np.ones((20, 30), np.uint16), "YX")
    with pytest.raises(ValueError, match=r"labels labels.tif have shape \(20, 31\) but image image.tif"):
        read_training_pair(tmp_path / "image.tif", tmp_path / "labels.tif")
    image, labels, mask = read_training_pair(tmp_path / "image.tif", tmp_path / "good.tif", tmp_path / "good.tif")
    assert image.dtype == np.float32 and mask.all() and labels.shape == (20, 30)
    np.testing.assert_allclose(np.percentile(image, [1, 99.8]), [0, 1], atol=1e-4)


def sparse_bands(shape: tuple[int, int]) -> np.ndarray:
    """int16 sparse labels: two cells annotated in bands of background that cut "not annotated" (-1) in four."""
    sparse = np.full(shape, -1, np.int16)
    sparse[14:18], sparse[30:34], sparse[46:50] = 0, 0, 0
    sparse[14:18, 5:10], sparse[30:34, 40:45] = 1, 2
    return sparse


def test_an_image_given_as_training_labels_is_refused_and_masks_and_sparse_labels_pass(tmp_path):
    """Images and labels swapped, or a grey image given as labels, trained on nonsense: such labels (many values,
    each over many separate regions) are refused as `evaluate` refuses them. Instance labels with many ids, sparse
    labels whose "not annotated" value lies in many pieces, and a binary 0/255 mask (ISBI, Fiji) pass unchanged."""
    from napari_unet.synthetic import make_cells

    image, labels = make_cells((64, 72), seed=0, radius=(4.0, 8.0))
    assert labels.max() > 10
    write_tiff(tmp_path / "image.tif", (image * 1000).astype(np.uint16), "YX")
    write_tiff(tmp_path / "labels.tif", labels.astype(np.uint16), "YX")
    with pytest.raises(ValueError, match="image.tif does not look like instance labels: its .* values lie in"):
        read_training_pair(tmp_path / "labels.tif", tmp_path / "image.tif")  # swapped
    with pytest.raises(ValueError, match="give label images \\(one id per object, 0 = background\\)"):
        read_training_pair(tmp_path / "image.tif", tmp_path / "image.tif")
    sparse = sparse_bands(labels.shape)
    mask = ((labels > 0) * 255).astype(np.uint8)
    for name, kept in (("labels.tif", labels), ("sparse.tif", sparse), ("mask.tif", mask)):
        write_tiff(tmp_path / name, kept, "YX")
        np.testing.assert_array_equal(read_training_pair(tmp_path / "image.tif", tmp_path / name)[1], kept)


def test_segment_file_keeps_the_pixel_size_z_step_and_frame_interval(tmp_path):
    """The labels (int32: an OME-TIFF) and probabilities (float32: ImageJ) of a stack and of a time series carry
    the input's pixel size, Z step and frame interval (`predict` dropped the last two)."""
    from napari_unet.metadata import PixelSize, StackSpacing, read_pixel_size, read_spacing

    model, size = bundle(seed=3), PixelSize(0.4, 0.4, "um")
    image = np.random.default_rng(4).random((2, 3, 36, 36)).astype(np.float32)
    outputs = output_paths(tmp_path / "movie.tif", tmp_path / "out", probabilities=True)
    spacing = StackSpacing(z=1.5, t=60.0)
    list(segment_file(model, image, "TZYX", outputs, device="cpu", pixel_size=size, spacing=spacing))
    for path in (outputs.labels, outputs.probs):
        assert read_image(path)[1] == "TZYX"
        assert read_pixel_size(path) == size
        assert read_spacing(path, size) == spacing


def test_label_files_named_as_other_tools_name_them_pair_with_their_images():
    """Cellpose's `x_cp_masks.png` / `x_masks.tif` did not pair with `x.png` (only `_labels`/`_probs` were
    tolerated): they pair now, in the second list, when no file there has the image's name already."""
    images = [Path("im/a.png"), Path("im/b.png"), Path("im/c.png")]
    labels = [Path("lab/a_cp_masks.png"), Path("lab/b_masks.tif"), Path("lab/c.tif"), Path("lab/c_mask.png")]
    match = match_files(images, labels)
    assert match.pairs == [
        (Path("im/a.png"), Path("lab/a_cp_masks.png")),
        (Path("im/b.png"), Path("lab/b_masks.tif")),
        (Path("im/c.png"), Path("lab/c.tif")),  # c.tif is c's: c_mask.png stays without a partner
    ]
    assert [p.name for p in match.unmatched_second] == ["c_mask.png"]
    alone = match_files([Path("im/a.png"), Path("im/z.png")], [Path("lab/x_masks.png"), Path("lab/a.tif")])
    assert [p.name for p in alone.unmatched_second] == ["x_masks.png"]
    measured = match_files([Path("lab/a_cp_masks.png"), Path("lab/b.tif")], [Path("im/a.png"), Path("im/b.png")])
    assert measured.pairs == [(Path("lab/a_cp_masks.png"), Path("im/a.png")), (Path("lab/b.tif"), Path("im/b.png"))]


def test_one_folder_keeps_one_label_file_per_image_the_most_recent_kind_first():
    """A folder with two label files of one image (the plugin's annotations as saved now and before 2026-12, a
    corrected predict result, Cellpose's names) stopped train with 'two labels files have the base name'. One is
    used, the others are set aside (to be named in a note)."""
    from napari_unet.pipeline import split_beside

    files = ["x.tif", "x.unet-labels.tif", "x_labels.tif", "x.tif.unet-labels.tif", "y.png", "y_masks.png"]
    images, labels, others = split_beside([*files, "y_cp_masks.png", "z.png", "z_labels.tif", "z_probs.tif"])
    assert [p.name for p in images] == ["x.tif", "y.png", "z.png"]
    assert [p.name for p in labels] == ["x.tif.unet-labels.tif", "y_cp_masks.png", "z_labels.tif"]
    assert sorted(p.name for p in others) == ["x.unet-labels.tif", "x_labels.tif", "y_masks.png", "z_probs.tif"]
    assert match_files(images, labels).pairs == list(zip(images, labels))


def test_annotation_and_mask_files_are_not_inputs_of_predict(tmp_path):
    """`predict data/*.tif` names the plugin's annotations beside the images as inputs: refused as two inputs
    written to one output (x.tif and x.tif.unet-labels.tif); in Cellpose's layout the label files (y_cp_masks.png
    beside y.png) were segmented as images. Both are left out and named in the note."""
    from napari_unet.pipeline import describe_own_outputs, list_inputs

    for name in ("x.tif", "x.tif.unet-labels.tif", "x_labels.tif", "y.png", "y_cp_masks.png", "z_masks.png"):
        (tmp_path / name).write_bytes(b"")
    inputs, left = list_inputs(sorted(tmp_path.iterdir()))
    assert [p.name for p in inputs] == ["x.tif", "y.png", "z_masks.png"]  # no z.* beside z_masks.png: an image
    assert sorted(p.name for p in left) == ["x.tif.unet-labels.tif", "x_labels.tif", "y_cp_masks.png"]
    said = describe_own_outputs(left)
    assert "predict's output of another input: x_labels.tif" in said
    assert "napari plugin's annotations, not images: x.tif.unet-labels.tif" in said
    assert "label file(s) named after an image beside them (x_masks.png): y_cp_masks.png" in said
    assert list_inputs([tmp_path])[0] == inputs  # the folder listed: the same


def test_the_newer_name_of_the_plugins_annotations_is_paired_when_both_are_there(tmp_path):
    """A folder annotated before and after December 2026 holds `x.unet-labels.tif` and `x.tif.unet-labels.tif`:
    measure (and every pairing by name) stopped with "two label files have the base name 'x'"; the newer file is
    the one paired now. Two images' annotations of one base name (`x.tif`, `x.png`) are still refused."""
    labels = list_files(touch(tmp_path / "l", "x.unet-labels.tif", "x.tif.unet-labels.tif", "y.unet-labels.tif"))
    images = list_files(touch(tmp_path / "i", "x.tif", "y.tif"))
    match = match_files(labels, images, ("labels", "images"))
    assert [a.name for a, _ in match.pairs] == ["x.tif.unet-labels.tif", "y.unet-labels.tif"]
    both = list_files(touch(tmp_path / "b", "x.tif.unet-labels.tif", "x.png.unet-labels.tif"))
    with pytest.raises(ValueError, match="the base name 'x'"):
        match_files(both, images, ("labels", "images"))
