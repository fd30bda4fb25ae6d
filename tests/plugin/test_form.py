"""The docks' shared controls: the run row, the model row, the post-processing fields (Qt widgets, no viewer)."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QWidget

from napari_unet.modelfile import load_model
from napari_unet.plugin._form import ModelRow, RunControls
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
