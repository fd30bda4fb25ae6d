"""What the Fine-tune dock autosaves over a session: each Start replaces the annotations the session saved (no copy
of its own, nothing written when unchanged), an earlier session's, restored or not, are kept once; a Restore offer
goes with its image and never pairs annotations with an image of another size; restored annotations can be painted
on; an image opened from a URL has one file of annotations, offered back; every run gets its own model folder."""

from __future__ import annotations

import errno
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from napari_unet.io import write_tiff
from napari_unet.plugin import _autosave, _autosave_row, _start_from
from napari_unet.plugin._finetune import FineTuneWidget
from napari_unet.synthetic import make_cells


def painted(labels: np.ndarray, count: int) -> np.ndarray:
    """The first `count` cells of `labels` painted, the others not (int32, as a Labels layer paints)."""
    ids = [i for i in np.unique(labels) if i][:count]
    return np.where(np.isin(labels, ids), labels, 0).astype(np.int32)


@pytest.fixture
def opened(make_napari_viewer_proxy, tmp_path, monkeypatch):
    """A viewer with data/cells.tif opened, a Fine-tune dock autosaving to tmp_path/autosave, its notifications."""
    image, labels = make_cells((64, 64), seed=3, radius=(4.0, 8.0))  # 13 cells: painted(n) differ up to 13
    path = tmp_path / "data" / "cells.tif"
    path.parent.mkdir()
    write_tiff(path, (image * 1000).astype(np.uint16), "YX")
    messages: list[str] = []
    for name in ("show_info", "show_warning", "show_error"):
        monkeypatch.setattr(_autosave_row, name, messages.append)
    viewer = make_napari_viewer_proxy()
    dock = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    return SimpleNamespace(viewer=viewer, dock=dock, path=path, labels=labels, messages=messages)


def copies(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "autosave" / "annotations" / "previous").glob("*.tif"))


@pytest.mark.viewer
def test_the_starts_of_one_session_replace_its_own_annotations_without_copies(opened, tmp_path):
    """Paint, Start, paint more, Start: every Start after the first kept a full copy of the previous annotations in
    previous/, with a notification; after a Restore too. Only an earlier session's annotations (restored or not)
    are copied now: once, at the first Start that replaces them."""
    (layer,) = opened.viewer.open(opened.path, plugin="napari-unet-2015")
    sidecar = _autosave.sidecar_path(opened.path)
    for count in (1, 2, 3):  # the paint-more-then-retrain loop
        opened.dock.autosave.save_annotations(painted(opened.labels, count), layer)
    np.testing.assert_array_equal(_autosave.load_annotations(sidecar), painted(opened.labels, 3))
    assert copies(tmp_path) == [] and not [m for m in opened.messages if "kept" in m]

    opened.viewer.layers.clear()  # the next session: restored, painted more, Start, painted more, Start
    later = FineTuneWidget(opened.viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    (layer,) = opened.viewer.open(opened.path, plugin="napari-unet-2015")
    restored = later.autosave.restore()
    for count in (4, 5):
        restored.data = painted(opened.labels, count)
        later.autosave.save_annotations(np.asarray(restored.data), layer)
    (restored_kept,) = copies(tmp_path)  # the earlier session's, as they were restored: once
    np.testing.assert_array_equal(_autosave.load_annotations(restored_kept), painted(opened.labels, 3))

    opened.viewer.layers.clear()  # one more session, painting anew without Restore: the earlier cells are kept once
    anew = FineTuneWidget(opened.viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    (layer,) = opened.viewer.open(opened.path, plugin="napari-unet-2015")
    for count in (1, 2):
        anew.autosave.save_annotations(painted(opened.labels, count), layer)
    (kept,) = set(copies(tmp_path)) - {restored_kept}
    np.testing.assert_array_equal(_autosave.load_annotations(kept), painted(opened.labels, 5))
    assert len([m for m in opened.messages if str(kept) in m]) == 1
    np.testing.assert_array_equal(_autosave.load_annotations(sidecar), painted(opened.labels, 2))


@pytest.mark.viewer
def test_annotations_restored_then_discarded_are_kept(opened, tmp_path):
    """An earlier session's 5 cells restored, that layer removed, 1 cell painted on a new one, Start: the side-car
    held 1 cell and previous/ nothing (the restored file counted as this session's own). The first Start that
    replaces restored annotations keeps them in previous/, once."""
    earlier = painted(opened.labels, 5)
    _autosave.save_annotations(earlier, tmp_path / "autosave", opened.path, "cells")
    (image,) = opened.viewer.open(opened.path, plugin="napari-unet-2015")
    opened.viewer.layers.remove(opened.dock.autosave.restore())
    for count in (1, 2):  # two Starts: one copy
        opened.dock.autosave.save_annotations(painted(opened.labels, count), image)
    (kept,) = copies(tmp_path)
    np.testing.assert_array_equal(_autosave.load_annotations(kept), earlier)
    assert len([m for m in opened.messages if str(kept) in m]) == 1
    np.testing.assert_array_equal(
        _autosave.load_annotations(_autosave.sidecar_path(opened.path)), painted(opened.labels, 2)
    )


@pytest.mark.viewer
def test_restored_stack_annotations_can_be_painted_on(opened, tmp_path):
    """Restored annotations of a Z stack were a read-only memory map of their file: painting raised "assignment
    destination is read-only"."""
    stack = np.stack([painted(opened.labels, 3)] * 3)
    write_tiff(opened.path, np.zeros(stack.shape, np.uint16), "ZYX")
    _autosave.save_annotations(stack, tmp_path / "autosave", opened.path, "cells")
    opened.viewer.open(opened.path, plugin="napari-unet-2015")
    restored = opened.dock.autosave.restore()
    restored.selected_label = 77
    restored.paint((1, 30, 30), 77)
    assert restored.data[1, 30, 30] == 77
    np.testing.assert_array_equal(_autosave.load_annotations(_autosave.sidecar_path(opened.path)), stack)


@pytest.mark.viewer
def test_unchanged_annotations_are_neither_read_back_nor_written_again(opened, monkeypatch):
    """A Start on a large stack blocked the window for seconds: the autosave read the previous file back to compare
    it, and wrote it again. Annotations unchanged since the last save (or the Restore) cost a hash now."""
    (layer,) = opened.viewer.open(opened.path, plugin="napari-unet-2015")
    labels = painted(opened.labels, 2)
    opened.dock.autosave.save_annotations(labels, layer)
    calls = []
    for name in ("load_annotations", "write_tiff"):
        monkeypatch.setattr(_autosave, name, lambda *args, name=name, **kwargs: calls.append(name))
    opened.dock.autosave.save_annotations(labels.copy(), layer)
    assert calls == [] and opened.dock.autosave.annotations_path == _autosave.sidecar_path(opened.path)
    monkeypatch.undo()
    opened.viewer.layers.clear()
    (layer,) = opened.viewer.open(opened.path, plugin="napari-unet-2015")
    restored = opened.dock.autosave.restore()
    for name in ("load_annotations", "write_tiff"):
        monkeypatch.setattr(_autosave, name, lambda *args, name=name, **kwargs: calls.append(name))
    opened.dock.autosave.save_annotations(np.asarray(restored.data), layer)
    assert calls == []


@pytest.mark.viewer
def test_a_data_folder_that_cannot_be_written_gets_one_file_and_one_copy(opened, tmp_path, monkeypatch):
    """Beside the image, an earlier session's annotations; the data folder refuses writes. Each Start copied them
    to previous/ again (silently) and wrote a new time-stamped file to the autosave folder: one file per image
    there now, and the earlier annotations copied once."""
    earlier = painted(opened.labels, 5)
    write_tiff(_autosave.sidecar_path(opened.path), earlier.astype(np.uint16), "YX")
    real_write, real_strftime = _autosave.write_tiff, _autosave.time.strftime
    seconds = itertools.count()

    def refused(path, *args, **kwargs):
        if Path(path).parent == opened.path.parent:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(_autosave, "write_tiff", refused)
    # every Start in another second, without waiting one (the times of files, `time.localtime`, as they are)
    monkeypatch.setattr(
        _autosave.time,
        "strftime",
        lambda form, moment=None: real_strftime(form, moment) if moment else f"20261201-1200{next(seconds):02d}",
    )
    (layer,) = opened.viewer.open(opened.path, plugin="napari-unet-2015")
    for count in (1, 2, 3):
        opened.dock.autosave.save_annotations(painted(opened.labels, count), layer)
    (saved,) = (tmp_path / "autosave" / "annotations").glob("*.unet-labels.tif")
    assert opened.dock.autosave.annotations_path == saved
    np.testing.assert_array_equal(_autosave.load_annotations(saved), painted(opened.labels, 3))
    (kept,) = copies(tmp_path)
    np.testing.assert_array_equal(_autosave.load_annotations(kept), earlier)
    np.testing.assert_array_equal(_autosave.load_annotations(_autosave.sidecar_path(opened.path)), earlier)
    assert _autosave.find_annotations(opened.path, tmp_path / "autosave") == saved


@pytest.mark.viewer
def test_an_offer_goes_with_its_image(opened, tmp_path):
    """a.tif opened (its annotations offered), closed, b.tif opened: Restore added a.tif's annotations, paired with
    b.tif, and the next Start saved them as b.tif's."""
    _autosave.save_annotations(painted(opened.labels, 3), tmp_path / "autosave", opened.path, "cells")
    other = opened.path.with_name("other.tif")
    write_tiff(other, np.zeros((64, 64), np.uint16), "YX")
    (layer,) = opened.viewer.open(opened.path, plugin="napari-unet-2015")
    assert not opened.dock.autosave.restore_button.isHidden()
    opened.viewer.layers.remove(layer)
    assert opened.dock.autosave.restore_button.isHidden()
    opened.viewer.open(other, plugin="napari-unet-2015")
    assert opened.dock.autosave.restore() is None
    assert [layer.name for layer in opened.viewer.layers] == ["other"]


@pytest.mark.viewer
def test_annotations_of_another_size_are_not_restored(opened, tmp_path):
    """An older version's side-car `cells.unet-labels.tif` (of a 512 x 512 cells.tif) is offered for a 64 x 64
    cells.png of the same folder: it was restored over it without a word."""
    import imageio.v3 as iio

    labels = np.zeros((512, 512), np.uint16)
    labels[300:320, 300:320] = 1
    write_tiff(opened.path.with_name("cells.unet-labels.tif"), labels, "YX")
    iio.imwrite(opened.path.with_name("cells.png"), np.zeros((64, 64), np.uint8))
    opened.path.unlink()
    opened.viewer.open(opened.path.with_name("cells.png"))
    assert "cells.png" in opened.dock.autosave.restore_button.text()
    assert opened.dock.autosave.restore() is None
    assert len(opened.viewer.layers) == 1 and opened.dock.autosave.restore_button.isHidden()
    assert "(512, 512)" in opened.messages[-1] and "(64, 64)" in opened.messages[-1]


def test_labels_fit_an_image_of_their_y_x_and_leading_axes():
    fits = _autosave_row.fits_image
    assert fits((3, 64, 64), (3, 64, 64)) and fits((64, 64), (64, 64))
    assert fits((5, 64, 64), (2, 5, 64, 64))  # a channel axis the annotations do not have
    assert not fits((64, 64), (64, 65)) and not fits((4, 64, 64), (3, 64, 64)) and not fits((3, 64, 64), (64, 64))
    # the image's axes known: only its channels may be missing (2-D annotations fitted any Z stack)
    assert fits((5, 64, 64), (2, 5, 64, 64), "CZYX") and fits((3, 64, 64), (3, 64, 64), "ZYX")
    assert not fits((64, 64), (4, 64, 64), "ZYX") and not fits((5, 64, 64), (2, 5, 64, 64), "TZYX")
    assert fits((64, 64), (4, 64, 64), None)  # axes unknown: all leading axes but one, as before


@pytest.mark.viewer
def test_2d_annotations_are_not_restored_over_a_z_stack(opened, tmp_path):
    """A 2-D side-car (an older version's `cells.unet-labels.tif`, of a 2-D cells.png of that folder) was restored
    over the Z stack cells.tif as "all its leading axes but one"; Start then refused them. Over a colour picture
    (its colours are no axis of the annotations) 2-D annotations are still restored."""
    import imageio.v3 as iio

    write_tiff(opened.path.with_name("cells.unet-labels.tif"), painted(opened.labels, 5).astype(np.uint16), "YX")
    write_tiff(opened.path, np.zeros((4, 64, 64), np.uint16), "ZYX")
    opened.viewer.open(opened.path, plugin="napari-unet-2015")
    assert not opened.dock.autosave.restore_button.isHidden()
    assert opened.dock.autosave.restore() is None and len(opened.viewer.layers) == 1
    assert "(64, 64)" in opened.messages[-1] and "(4, 64, 64)" in opened.messages[-1]

    picture = opened.path.with_name("colours.png")
    iio.imwrite(picture, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    _autosave.save_annotations(painted(opened.labels, 2), tmp_path / "autosave", picture, "colours")
    (layer,) = opened.viewer.open(picture, plugin="napari-unet-2015")
    assert layer.rgb
    restored = opened.dock.autosave.restore()
    np.testing.assert_array_equal(restored.data, painted(opened.labels, 2))


@pytest.mark.viewer
def test_annotations_of_an_image_that_is_no_local_file_go_to_the_autosave_folder(opened, tmp_path, monkeypatch):
    """An image opened from a URL has the URL as its source: its annotations went to `<working folder>/http:/…`.
    A source that is no file here (a URL, a file gone since) has its annotations in the autosave folder now."""
    monkeypatch.chdir(tmp_path)
    for source in ("http://127.0.0.1:8765/cells.png", str(tmp_path / "gone" / "cells.tif")):
        layer = SimpleNamespace(
            name="cells", source=SimpleNamespace(path=source), metadata={}, data=np.zeros((64, 64), np.uint16)
        )
        opened.dock.autosave.save_annotations(painted(opened.labels, 1), layer)
        assert opened.dock.autosave.annotations_path.parent == tmp_path / "autosave" / "annotations"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["autosave", "data"]


@pytest.mark.viewer
def test_an_image_opened_from_a_url_has_one_file_of_annotations_offered_back(opened, tmp_path):
    """A URL image's annotations went to a new `<name>-<time>` file every session, never offered back. They are
    recorded under the URL now: one file, offered when the same URL is opened again, an earlier session's kept
    once before a Start replaces them."""
    from napari.layers import Image
    from napari.layers._source import layer_source

    url = "http://127.0.0.1:8765/cells.png"
    folder = tmp_path / "autosave" / "annotations"
    for session in (1, 2, 3):
        opened.viewer.layers.clear()
        dock = FineTuneWidget(opened.viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
        with layer_source(path=url):
            layer = Image(np.zeros((64, 64), np.uint16), name="cells")
        opened.viewer.add_layer(layer)
        assert dock.autosave.restore_button.isHidden() == (session == 1)
        if session == 2:
            np.testing.assert_array_equal(dock.autosave.restore().data, painted(opened.labels, 1))
        dock.autosave.save_annotations(painted(opened.labels, session), layer)
    (saved,) = folder.glob("*.unet-labels.tif")
    np.testing.assert_array_equal(_autosave.load_annotations(saved), painted(opened.labels, 3))
    assert _autosave.find_annotations(url, tmp_path / "autosave") == saved
    kept = [_autosave.load_annotations(p) for p in copies(tmp_path)]  # each earlier session's, once
    assert len(kept) == 2 and all(any(np.array_equal(k, painted(opened.labels, n)) for k in kept) for n in (1, 2))


@pytest.mark.viewer
def test_runs_started_in_the_same_second_get_their_own_model_folders(opened, tmp_path, monkeypatch):
    """Model folders were named by the second: two runs started in one second wrote the same folder, whether the
    first had saved its model there already or not yet. No folder is made before a save (a napari killed before
    it would leave an empty one)."""
    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle, save_model

    monkeypatch.setattr(_autosave.time, "strftime", lambda _form: "20261201-120000")
    first = opened.dock.autosave.model_folder("cells")
    assert first == tmp_path / "autosave" / "models" / "20261201-120000-cells" and not first.exists()
    second = opened.dock.autosave.model_folder("cells")  # the first run has saved nothing yet
    assert second.name == "20261201-120000-cells-2"
    save_model(second, ModelBundle(UNet(depth=2, base_channels=4)))
    assert _autosave.model_folder(tmp_path / "autosave", "cells", taken=[first]).name == "20261201-120000-cells-3"
