"""The docks' settings come back in the next napari session; what no longer fits is skipped, a bad file set aside."""

from __future__ import annotations

import json

import pytest

from napari_unet.plugin import _settings
from napari_unet.plugin._batch import CLUSTER, LOCAL
from napari_unet.plugin._form import check, choice, spin
from napari_unet.plugin._reader import PLUGIN
from napari_unet.plugin._settings import Remembered, read_settings, write_dock_settings

pytestmark = pytest.mark.viewer


def test_the_settings_file_keeps_each_docks_settings_and_sets_a_bad_file_aside(tmp_path):
    path = tmp_path / "settings.json"
    assert read_settings(path) == {}
    write_dock_settings(path, "segment", {"tile_size": 256, "tta": True})
    write_dock_settings(path, "batch", {"address": "tcp://scheduler:8786"})
    write_dock_settings(path, "segment", {"tile_size": 512, "tta": False})  # replaces its own, keeps the other's
    assert read_settings(path) == {
        "segment": {"tile_size": 512, "tta": False},
        "batch": {"address": "tcp://scheduler:8786"},
    }
    assert json.loads(path.read_text())["version"] == _settings.VERSION

    for bad in (b"{not json", b"[1, 2]", b'{"docks": {"segment": 3}}'):
        path.write_bytes(bad)
        assert read_settings(path) == {}
        aside = path.with_name("settings.json.unreadable")
        assert not path.exists() and aside.read_bytes() == bad  # kept, not lost
        aside.unlink()


def test_controls_are_restored_and_written_when_they_change(qtbot, tmp_path):
    path = tmp_path / "settings.json"
    box, spinner, combo = check("tta"), spin(0, 8192, 0, step=16), choice(["cpu", "cuda:0"])
    for widget in (box, spinner, combo):
        qtbot.addWidget(widget)
    Remembered("dock", {"tta": box, "tile": spinner, "device": combo}, path)
    assert read_settings(path) == {}  # nothing written until a control changes
    spinner.setValue(320)
    assert read_settings(path) == {"dock": {"tta": False, "tile": 320, "device": "cpu"}}
    box.setChecked(True)
    combo.setCurrentText("cuda:0")

    written = path.read_bytes()
    path.write_bytes(written.replace(b"\n", b"\n "))  # restoring must not write the file back
    before = path.read_bytes()
    again = check("tta"), spin(0, 8192, 0, step=16), choice(["cpu", "cuda:0"])
    for widget in again:
        qtbot.addWidget(widget)
    remembered = Remembered("dock", dict(zip(("tta", "tile", "device"), again)), path)
    assert remembered.values() == {"tta": True, "tile": 320, "device": "cuda:0"} and remembered.skipped == []
    assert path.read_bytes() == before


def test_stored_values_that_no_longer_fit_are_skipped(qtbot, tmp_path):
    path = tmp_path / "settings.json"
    write_dock_settings(
        path, "dock", {"tile": 100_000, "device": "cuda:3", "tta": "yes", "diameter": float("nan"), "count": 2.5}
    )
    tile, device, tta = spin(0, 8192, 0), choice(["cpu"]), check("tta")
    diameter, count = spin(0.0, 1000.0, 0.0, decimals=1), spin(1, 10, 1)
    for widget in (tile, device, tta, diameter, count):
        qtbot.addWidget(widget)
    remembered = Remembered(
        "dock", {"tile": tile, "device": device, "tta": tta, "diameter": diameter, "count": count}, path
    )
    assert sorted(remembered.skipped) == ["count", "device", "diameter", "tile", "tta"]
    assert remembered.values() == {"tile": 0, "device": "cpu", "tta": False, "diameter": 0.0, "count": 1}


def test_a_settings_file_that_cannot_be_written_costs_only_the_memory_of_the_settings(qtbot, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the settings' folder would be")
    box = check("tta")
    qtbot.addWidget(box)
    Remembered("dock", {"tta": box}, blocker / "settings.json")
    box.setChecked(True)  # an OSError inside, no error out
    assert box.isChecked() and blocker.read_text().startswith("a file")


def test_the_docks_come_back_as_they_were_left(make_napari_viewer_proxy, qtbot, dock_settings):
    viewer = make_napari_viewer_proxy()
    _dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    segment.tile_spin.setValue(256)
    segment.diameter_spin.setValue(35.0)
    segment.tta_check.setChecked(True)
    segment.probs_check.setChecked(True)
    segment.on_open_check.setChecked(True)  # a mode for this session, not a setting
    _dock, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    finetune.preset_combo.setCurrentText("paper")
    finetune.iterations_spin.setValue(1234)  # after the preset, which set its own
    finetune.budget_spin.setValue(2.5)
    finetune.margin_spin.setValue(40)
    _dock, batch = viewer.window.add_plugin_dock_widget(PLUGIN, "Batch")
    batch.where_combo.setCurrentText(CLUSTER)
    batch.address_edit.setText("tcp://scheduler:8786")
    batch.block_spin.setValue(2048)
    batch.input_edit.setText("/data/slides")  # a folder of this session's work, not a setting
    viewer.close()
    assert set(read_settings(dock_settings)) == {"segment", "finetune", "batch"}

    viewer = make_napari_viewer_proxy()  # the next napari session
    _dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert (segment.tile_spin.value(), segment.diameter_spin.value()) == (256, 35.0)
    assert segment.tta_check.isChecked() and segment.probs_check.isChecked()
    assert not segment.on_open_check.isChecked() and not segment.uncertainty_check.isChecked()
    _dock, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert finetune.preset_combo.currentText() == "paper" and finetune.iterations_spin.value() == 1234
    assert (finetune.budget_spin.value(), finetune.margin_spin.value()) == (2.5, 40)
    _dock, batch = viewer.window.add_plugin_dock_widget(PLUGIN, "Batch")
    assert batch.where_combo.currentText() == CLUSTER and batch.address_edit.text() == "tcp://scheduler:8786"
    assert batch.address_edit.isEnabled()  # the dock reacted to the restored choice as to a click
    assert batch.block_spin.value() == 2048 and batch.input_edit.text() == ""
    batch.where_combo.setCurrentText(LOCAL)
    assert read_settings(dock_settings)["batch"]["run_on"] == LOCAL


def test_the_autosave_folder_chosen_is_the_next_sessions(make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch):
    """Annotations autosaved in a folder chosen with Change… are found again in the next session, which saves
    there too; a chosen folder that is gone falls back to the default."""
    from napari_unet.plugin import _autosave, _autosave_row

    chosen = tmp_path / "lab autosave"
    chosen.mkdir()
    monkeypatch.setattr(_autosave_row.QFileDialog, "getExistingDirectory", lambda *_args: str(chosen))
    viewer = make_napari_viewer_proxy()
    _dock, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert finetune.autosave.root == _autosave.default_root()
    finetune.autosave.change_button.click()
    assert finetune.autosave.root == chosen
    viewer.close()

    viewer = make_napari_viewer_proxy()
    _dock, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert finetune.autosave.root == chosen and str(chosen) in finetune.autosave.label.text()
    viewer.close()

    chosen.rmdir()
    viewer = make_napari_viewer_proxy()
    _dock, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert finetune.autosave.root == _autosave.default_root()
