"""napari_unet.validation and the library functions that use it: the same inputs accepted and refused as by the
command line (docs/formats.md, "What is accepted and what is refused"); atomic writes and their recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_unet.io import atomic_write, read_image, read_labels, remove_stale_temporaries, write_tiff
from napari_unet.metrics import instance_scores, seg_score
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, is_model_folder, load_model, save_model
from napari_unet.synthetic import make_cells
from napari_unet.tiling import predict_tiled
from napari_unet.training import Sample, TrainConfig, Trainer
from napari_unet.validation import (
    DtypeError,
    check_image,
    check_labels,
    check_mask,
    check_output_not_input,
    check_writable_folder,
)
from napari_unet.weights import weight_map

INTEGERS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


def cells(dtype=np.int32, shift: int = 0) -> np.ndarray:
    labels = make_cells((96, 96), seed=2)[1].astype(np.uint64)  # 5 cells
    return np.where(labels > 0, labels + np.uint64(shift), 0).astype(dtype)


@pytest.mark.parametrize("dtype", INTEGERS)
def test_labels_of_every_integer_width_are_accepted_as_they_are(dtype):
    labels = cells(dtype)
    np.testing.assert_array_equal(check_labels(labels), labels)
    assert check_labels(labels).dtype == dtype


@pytest.mark.parametrize("dtype", (np.int16, np.int32, np.int64))
def test_the_sparse_value_minus_one_is_accepted_and_others_below_zero_refused(dtype):
    labels = cells(dtype)
    labels[:, :10] = -1
    assert check_labels(labels).min() == -1
    labels[0, 0] = -2
    with pytest.raises(ValueError, match="found the value -2"):
        check_labels(labels)


@pytest.mark.parametrize(
    ("dtype", "shift", "reserved"),
    [(np.uint32, 2**31, 2**32 - 1), (np.int64, 2**40, -1), (np.uint64, 2**63, 2**64 - 1)],
)
def test_ids_above_int32_are_renumbered_in_order_keeping_the_sparse_value(dtype, shift, reserved):
    labels = cells(dtype, shift)
    labels[:4] = reserved
    checked = check_labels(labels)
    expected = cells(np.int32)
    expected[:4] = -1
    assert checked.dtype == np.int32
    np.testing.assert_array_equal(checked, expected)
    # what training uses is the same as for ids 1..n: the weight map does not depend on the size of the ids
    np.testing.assert_array_equal(weight_map(labels), weight_map(expected))


def test_bool_labels_are_a_binary_mask():
    assert check_labels(cells() > 0).dtype == np.uint8


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((4, 4), np.float32), "must be integers"),
        (np.zeros((4, 4), np.complex64), "must be integers"),
        (np.zeros((2, 4, 4), np.int32), "2-D"),
        (np.zeros((0, 4), np.int32), "empty"),
    ],
)
def test_labels_that_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        check_labels(labels)


def test_a_wrong_dtype_is_both_a_type_error_and_a_value_error():
    with pytest.raises(TypeError):
        check_labels(np.zeros((4, 4), np.float64))
    assert issubclass(DtypeError, ValueError) and issubclass(DtypeError, TypeError)


def test_masks():
    assert check_mask(np.eye(4, dtype=np.uint16) * 7, (4, 4)).dtype == bool
    with pytest.raises(ValueError, match="bool or integers"):
        check_mask(np.eye(4), (4, 4))
    with pytest.raises(ValueError, match="shape"):
        check_mask(np.eye(3, dtype=bool), (4, 4))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]], np.float32), "1 NaN or infinite"),
        (np.full((4, 4), 2, np.uint8), "constant"),
        (np.eye(4, dtype=np.complex64), "real numbers"),
        (np.zeros((0, 4), np.float32), "empty"),
    ],
)
def test_images_that_are_refused(image, message):
    with pytest.raises(ValueError, match=message):
        check_image(image, "YX")


@pytest.mark.parametrize("dtype", (*INTEGERS, np.float16, np.float32, np.float64, bool))
def test_images_of_every_real_dtype_are_accepted(dtype):
    check_image(np.eye(5, dtype=dtype), "YX")


@pytest.mark.parametrize("bad", (np.nan, np.inf, -np.inf))
def test_predict_tiled_refuses_non_finite_images(bad):
    image = make_cells((48, 48), seed=1)[0].astype(np.float32)
    image[3, 3] = bad
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        predict_tiled(UNet(depth=2, base_channels=2), image, device="cpu")


def test_the_trainer_checks_labels_like_the_command_line():
    image = make_cells((96, 96), seed=2)[0]
    config = TrainConfig(iterations=1, tile_size=44)
    with pytest.raises(ValueError, match="found the value -2"):
        Trainer(UNet(depth=2, base_channels=2), config, [Sample(image, cells(np.int16) - 2)], device="cpu")
    with pytest.raises(ValueError, match="must be integers"):
        Trainer(UNet(depth=2, base_channels=2), config, [Sample(image, cells(np.float32))], device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        Trainer(UNet(depth=2, base_channels=2), config, [Sample(np.full((96, 96), np.nan), cells())], device="cpu")
    trainer = Trainer(UNet(depth=2, base_channels=2), config, [Sample(image, cells(np.uint64, 2**63))], device="cpu")
    np.testing.assert_array_equal(trainer.train[0].cells, cells(np.int32))  # no wrap-around to negative ids


@pytest.mark.parametrize("shift", (0, 2**31, 2**40))
def test_scores_do_not_depend_on_the_size_of_the_ids(shift):
    truth = cells(np.int64, shift)
    pred = np.roll(truth, 2, axis=1)
    reference = instance_scores(np.roll(cells(np.int64), 2, axis=1), cells(np.int64))
    assert instance_scores(pred, truth) == pytest.approx(reference)
    assert seg_score(truth, truth) == 1.0


def test_the_sparse_value_in_many_pieces_is_no_id_of_an_image():
    """Two annotated cells in bands of background that cut "not annotated" (-1) in four: -1 counted as an id
    made them look like an image (3 values in 6 regions); ignored, they are labels."""
    from napari_unet.validation import check_instance_regions

    sparse = np.full((64, 72), -1, np.int16)
    sparse[14:18], sparse[30:34], sparse[46:50] = 0, 0, 0
    sparse[14:18, 5:10], sparse[30:34, 40:45] = 1, 2
    with pytest.raises(ValueError, match="3 values lie in 6 separate regions"):
        check_instance_regions(sparse)
    assert check_instance_regions(sparse, ignore=-1) is False
    stripes = np.zeros((40, 40), np.uint16)
    stripes[::4] = 255
    stripes[:, :4] = 65535  # the uint16 sparse value beside a binary 0/255 mask
    assert check_instance_regions(stripes, ignore=65535) is True


def test_read_labels_renumbers_huge_ids(tmp_path):
    write_tiff(tmp_path / "l.tif", cells(np.uint32, 2**31), "YX")
    np.testing.assert_array_equal(read_labels(tmp_path / "l.tif"), cells(np.int32))


# ------------------------------------------------------------------------------------------------- paths


def test_an_output_equal_to_an_input_is_refused_also_through_a_link(tmp_path):
    source = tmp_path / "a.tif"
    source.write_bytes(b"x")
    (tmp_path / "link.tif").symlink_to(source)
    with pytest.raises(ValueError, match="would replace the input"):
        check_output_not_input([tmp_path / "link.tif"], [source])
    with pytest.raises(ValueError, match="would replace the input"):
        check_output_not_input([tmp_path / "sub" / ".." / "a.tif"], [source])
    check_output_not_input([tmp_path / "b.tif"], [source])


def test_an_unwritable_folder_is_found_at_once(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(PermissionError, match="not writable"):
        check_writable_folder(tmp_path / "file" / "out")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_writable_folder(tmp_path / "file")
    assert check_writable_folder(tmp_path / "new" / "out").is_dir()


# ------------------------------------------------------------------------------------------ atomic writes


def test_an_interrupted_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "scores.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as staging:
            staging.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]
    with atomic_write(target) as staging:
        staging.write_text("new")
    assert target.read_text() == "new"


def dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "a.tif"
    dead = tmp_path / f".a.tif.{dead_pid()}.abc.tmp"
    alive = tmp_path / f".a.tif.{os.getpid()}.abc.tmp"
    other = tmp_path / f".b.tif.{dead_pid()}.abc.tmp"
    # a live writer of 'a.tif.2024', whose name starts like a.tif's: 2024 was taken for a (dead) process id
    longer = tmp_path / f".a.tif.2024.{os.getpid()}.abc.tmp"
    for path in (dead, alive, other, longer):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(target) == [dead]
    assert alive.exists() and other.exists() and longer.exists() and not dead.exists()


def test_a_save_killed_between_its_two_renames_is_recovered(tmp_path):
    folder = save_model(tmp_path / "m", ModelBundle(UNet(depth=2, base_channels=2), metadata={"iterations": 5}))
    os.replace(folder, tmp_path / f".m.{dead_pid()}.old.tmp")  # the state a kill between the renames leaves
    assert not folder.exists()
    assert load_model(folder).metadata["iterations"] == 5 and is_model_folder(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_unreadable_autosave_index_is_rebuilt_from_the_records(tmp_path):
    from napari_unet.plugin import _autosave

    root = tmp_path / "root"
    (tmp_path / "no-folder").write_bytes(b"")
    images = [tmp_path / "no-folder" / f"{name}.tif" for name in ("a", "b")]  # no side-car: root + index
    saved = [
        _autosave.save_annotations(cells(np.uint16) + i, root, image, image.stem) for i, image in enumerate(images)
    ]
    index = root / "annotations" / "index.json"
    index.write_bytes(b"{ truncated")
    assert _autosave.find_annotations(images[1], root) == saved[1]
    assert json.loads(index.read_text()) == {str(p.resolve()): str(s.resolve()) for p, s in zip(images, saved)}
    (kept,) = (root / "annotations").glob("index.json.unreadable-*")
    assert kept.read_bytes() == b"{ truncated"


def test_the_newer_annotations_are_offered_when_a_later_save_could_not_write_beside_the_image(tmp_path, monkeypatch):
    """A side-car saved first, then a save the data disk refused (full): it went to the autosave root, and the
    older side-car was offered back on reopening."""
    import errno

    from napari_unet.plugin import _autosave

    root, image = tmp_path / "root", tmp_path / "data" / "cells.tif"
    image.parent.mkdir()
    write_tiff(image, cells(np.uint16), "YX")
    first = _autosave.save_annotations(cells(np.uint16) * 0 + 1, root, image, "cells")
    assert first == _autosave.sidecar_path(image)
    os.utime(first, ns=(1, 1))  # older than anything saved now
    real = _autosave.write_tiff

    def full_data_disk(path, *args, **kwargs):
        if Path(path).parent == image.parent:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(_autosave, "write_tiff", full_data_disk)
    newer = _autosave.save_annotations(cells(np.uint16), root, image, "cells")
    assert newer.parent == root / "annotations" and first.is_file()
    assert _autosave.find_annotations(image, root) == newer


def test_annotations_saved_earlier_beside_the_image_are_kept_when_new_ones_replace_them(tmp_path):
    """Yesterday's 5 painted cells beside cells.tif, then 1 cell painted anew (not restored) and Start: the side-car
    held 1 cell and the 5 were gone. Now the earlier file is copied to the autosave root first (once per change)."""
    from napari_unet.plugin import _autosave

    root, image = tmp_path / "root", tmp_path / "data" / "cells.tif"
    image.parent.mkdir()
    write_tiff(image, cells(np.uint16), "YX")
    yesterday = np.zeros((32, 32), np.uint16)
    for i in range(5):
        yesterday[2 + 6 * i : 6 + 6 * i, 4:8] = i + 1
    today = np.zeros_like(yesterday)
    today[10:14, 20:24] = 1
    kept = []
    assert _autosave.save_annotations(yesterday, root, image, "cells", on_kept=kept.append) == _autosave.sidecar_path(
        image
    )
    assert kept == []  # nothing there before
    _autosave.save_annotations(yesterday, root, image, "cells", on_kept=kept.append)
    assert kept == []  # the same annotations: nothing to keep
    _autosave.save_annotations(today, root, image, "cells", on_kept=kept.append)
    assert len(kept) == 1 and kept[0].parent == root / "annotations" / "previous"
    np.testing.assert_array_equal(_autosave.load_annotations(kept[0]), yesterday)
    np.testing.assert_array_equal(_autosave.load_annotations(_autosave.sidecar_path(image)), today)


def test_an_index_that_cannot_be_written_does_not_fail_a_save_beside_the_image(tmp_path):
    """The side-car was written, then the autosave root's index failed (the root under a file): the save was
    reported as failed ('Could not autosave') although the annotations were beside the image."""
    from napari_unet.plugin import _autosave

    blocker, image = tmp_path / "blocker", tmp_path / "data" / "cells.tif"
    blocker.write_text("a file where the autosave folder would be")
    image.parent.mkdir()
    write_tiff(image, cells(np.uint16), "YX")
    saved = _autosave.save_annotations(cells(np.uint16), blocker / "autosave", image, "cells")
    assert saved == _autosave.sidecar_path(image) and saved.is_file()
    assert _autosave.find_annotations(image, blocker / "autosave") == saved


def test_the_annotations_of_a_time_series_are_saved_as_one_with_its_frame_interval(tmp_path):
    """A (T, H, W) series' annotations were written as a Z stack (ZYX) and lost the frame interval: measured, their
    rows had a z column, not t."""
    import tifffile

    from napari_unet.metadata import read_pixel_size, read_spacing
    from napari_unet.plugin import _autosave

    image = tmp_path / "series.tif"
    tifffile.imwrite(
        image, np.zeros((3, 32, 32), np.uint16), imagej=True, metadata={"axes": "TYX", "finterval": 0.5, "tunit": "min"}
    )
    labels = np.zeros((3, 32, 32), np.int32)
    labels[:, 4:10, 4:10] = 1
    saved = _autosave.save_annotations(labels, tmp_path / "root", image, "series", axes="TYX")
    assert read_image(saved)[1] == "TYX"
    assert read_spacing(saved, read_pixel_size(saved)).t == 30.0  # seconds
    unknown = _autosave.save_annotations(labels, tmp_path / "root", image, "series", axes="CYX")
    assert read_image(unknown)[1] == "ZYX"  # axes that are not the labels': by their dimensions, as before
