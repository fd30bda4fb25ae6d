"""The docks' shared controls: the run row, the model row, the post-processing fields (Qt widgets, no viewer)."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt
from qtpy.QtGui import QValidator
from qtpy.QtWidgets import QWidget

from napari_unet.modelfile import load_model
from napari_unet.plugin._form import DurationSpin, ModelRow, RunControls
from napari_unet.plugin._postprocess import PostprocessFields
from napari_unet.plugin._state import Session
from napari_unet.postprocess import PostprocessConfig

pytestmark = pytest.mark.viewer


def test_run_controls_enable_the_start_button_or_the_others(qtbot):
    clicked = []
    controls = RunControls(("Run", lambda: clicked.append("run")), ("Cancel", lambda: clicked.append("cancel")))
    run, cancel = controls.buttons
    assert run.isEnabled() and not cancel.isEnabled()
    controls.begin(12, "12 tiles")
    assert not run.isEnabled() and cancel.isEnabled()
    assert (controls.progress.maximum(), controls.progress.value(), controls.status.text()) == (12, 0, "12 tiles")
    cancel.click()
    controls.running(False)
    run.click()
    assert clicked == ["cancel", "run"] and run.isEnabled() and not cancel.isEnabled()
    assert controls.items() == (controls.row, controls.progress, controls.status)


def test_a_duration_box_holds_minutes_and_shows_a_duration_in_seconds_below_a_minute(qtbot):
    box = DurationSpin(100_000.0, 0.0, special="none")
    qtbot.addWidget(box)
    assert box.text() == "none" and box.seconds() == 0.0
    shown = {}
    for minutes in (20 / 60, 0.5 / 60, 1.0, 1.5, 80 / 60, 10.0, 100_000.0):
        box.setValue(minutes)
        shown[box.text()] = box.seconds()
    assert shown == {
        "20 s": 20.0,
        "0.5 s": 0.5,
        "1 min": 60.0,
        "1 min 30 s": 90.0,
        "1 min 20 s": 80.0,
        "10 min": 600.0,
        "100000 min": 6_000_000.0,
    }
    typed = {}
    for text in ("45 s", "2", "1.5 min", "1 min 20 s", "2m", "1 h", "none"):
        box.setValue(7.0)
        box.selectAll()
        qtbot.keyClicks(box, text)
        qtbot.keyClick(box, Qt.Key.Key_Return)
        typed[text] = (box.seconds(), box.text())
    assert typed == {
        "45 s": (45.0, "45 s"),
        "2": (120.0, "2 min"),  # the box's unit: minutes
        "1.5 min": (90.0, "1 min 30 s"),
        "1 min 20 s": (80.0, "1 min 20 s"),
        "2m": (120.0, "2 min"),
        "1 h": (3600.0, "60 min"),
        "none": (0.0, "none"),
    }
    assert box.validate("20 s", 4)[0] == QValidator.State.Acceptable
    assert box.validate("1 mi", 4)[0] == QValidator.State.Intermediate  # on its way to "1 min"
    assert box.validate("20 apples", 9)[0] == QValidator.State.Invalid
    assert box.validate("20 s 1", 6)[0] == QValidator.State.Intermediate  # a bare number only alone


def test_model_row_follows_the_session_and_loads_through_its_callable(qtbot, tiny_bundle, monkeypatch):
    dock, session, loaded = QWidget(), Session(), []
    qtbot.addWidget(dock)
    row = ModelRow(dock, session, prefix="model: ", load=loaded.append)
    assert row.label.text() == "model: " + session.describe_model() and "no model yet" in row.label.text()
    session.set_model(tiny_bundle)
    assert "depth 3, 8 channels" in row.label.text()
    monkeypatch.setattr("napari_unet.plugin._form.QFileDialog.getExistingDirectory", lambda *args: "/some/model")
    row.load_button.click()
    assert loaded == ["/some/model"]
    assert row.rows() == [("model", row.label), ("", row.load_button)] and row.save_button is None


def test_the_session_saves_its_model_unless_training_and_the_model_row_asks_where(qtbot, tiny_bundle, tmp_path):
    dock, session = QWidget(), Session()
    qtbot.addWidget(dock)
    row = ModelRow(dock, session, save=True)
    assert session.save_model(tmp_path / "none") is None and not (tmp_path / "none").exists()
    session.set_model(tiny_bundle)
    session.training = True
    assert session.save_model(tmp_path / "busy") is None and not (tmp_path / "busy").exists()
    session.training = False
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("napari_unet.plugin._form.QFileDialog.getSaveFileName", lambda *args: (str(tmp_path / "m"), ""))
        row.save_button.click()
    assert session.model_path == tmp_path / "m" and load_model(tmp_path / "m").net.config.depth == 3


def test_postprocess_fields_read_and_show_a_config_without_announcing_it(qtbot):
    fields, changes = PostprocessFields(), []
    fields.on_change(lambda: changes.append(1))
    fields.show(PostprocessConfig(threshold=0.6, grow_threshold=0.3, min_size=12, watershed=True))
    assert changes == []  # showing a model's settings is no change of the user's
    base = PostprocessConfig(border_width=2)
    config = fields.config(base)
    assert (config.threshold, config.grow_threshold, config.min_size, config.watershed) == (0.6, 0.3, 12, True)
    assert config.border_width == 2  # what the fields do not show comes from the model's
    fields.grow.setValue(0.6)  # at the threshold: no growth
    assert fields.config(base).grow_threshold is None and changes == [1]
    fields.show(PostprocessConfig(threshold=0.5, grow_threshold=None))
    assert fields.grow.value() == 0.0 and fields.grow.text() == "off"
    assert fields.seeds.value() == 0.0 and fields.seeds.text() == "off"
    fields.threshold.setValue(0.3)  # lowering the threshold does not turn the seeds on
    assert not fields.config(base).seeds_from_cores
    fields.threshold.setValue(0.8)  # nor raising it the growth
    assert fields.config(base).grow_threshold is None
    fields.threshold.setValue(0.3)
    fields.seeds.setValue(0.9)  # cores above 0.9 seed the objects
    assert fields.config(base).seed_threshold == 0.9 and fields.config(base).seeds_from_cores
    assert changes == [1, 1, 1, 1, 1]
    fields.show(PostprocessConfig(threshold=0.5, grow_threshold=0.6))  # growth set but inactive: shown as off
    assert fields.grow.text() == "off" and fields.config(base).grow_threshold is None
    fields.show(PostprocessConfig(threshold=0.4, seed_threshold=0.975))
    assert fields.seeds.value() == 0.975 and fields.config(base).seed_threshold == 0.975
    fields.seeds.setValue(0.3)  # below the threshold: off
    assert not fields.config(base).seeds_from_cores
    fields.seeds.setValue(0.0)
    assert fields.config(base).seed_threshold is None
    assert not fields.config(base).flood
    fields.show(PostprocessConfig(threshold=0.95, flood=True))  # a model trained on membrane masks
    assert fields.flood.isChecked() and fields.config(base).flood
    fields.flood.setChecked(False)
    assert not fields.config(base).flood
