"""The docks' settings between napari sessions: tile size, device, object diameter, training preset and budget,
batch workers and cluster address, ... come back as they were left.

One JSON file, `~/.napari-unet/settings.json`: {"version": 1, "docks": {dock name: {setting: value}}}. Each change
is written at once (atomically: a napari killed mid-write leaves the previous file), so a crash keeps what was set.
A dock restores its settings when it is built; a value that no longer fits (a device this machine lacks, a number
out of range, a file edited by hand) is skipped and the control keeps its default. An unreadable file is set
aside as `settings.json.unreadable` and the docks start from their defaults. What belongs to an image or a
model is not kept: the layers chosen, the channels, the post-processing (the model's own), the annotated region,
"segment each image as it opens", the model's start choice, the folders of a batch.

The file is read and written by plain functions (`read_settings`, `write_dock_settings`); `Remembered` binds a
dock's controls to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QAbstractSpinBox, QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox, QWidget

from napari_unet.io import atomic_write

VERSION = 1
FILE_NAME = "settings.json"

Value = bool | int | float | str


def default_path() -> Path:
    """~/.napari-unet/settings.json (beside the autosave folder)."""
    return Path.home() / ".napari-unet" / FILE_NAME


def read_settings(path: str | Path) -> dict[str, dict[str, Any]]:
    """{dock name: {setting: value}} from `path`; {} when it does not exist. A file that cannot be read as such
    (a disk error, a hand edit, another program's JSON) is renamed `<name>.unreadable` and {} returned."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):
        _set_aside(path)
        return {}
    docks = data.get("docks") if isinstance(data, dict) else None
    if not isinstance(docks, dict) or not all(isinstance(values, dict) for values in docks.values()):
        _set_aside(path)
        return {}
    return docks


def write_dock_settings(path: str | Path, dock: str, values: Mapping[str, Value]) -> None:
    """Replace the settings of `dock` in the file at `path`, keeping the other docks' (read again just before, so
    two docks, or two napari windows, do not undo each other's settings)."""
    docks = read_settings(path)
    docks[dock] = dict(values)
    with atomic_write(path) as staging:
        staging.write_text(json.dumps({"version": VERSION, "docks": docks}, indent=1, sort_keys=True))


def _set_aside(path: Path) -> None:
    try:
        path.replace(path.with_name(path.name + ".unreadable"))
    except OSError:
        pass  # cannot move it (a read-only folder): the next write fails the same way and is skipped


class Remembered:
    """The controls of one dock, kept in the settings file: restored when built, written when one changes.

    >>> Remembered("segment", {"tile size": self.tile_spin, "device": self.device_combo})  # doctest: +SKIP

    Controls: check boxes (bool), drop-downs (their text, restored only if it is still one of the choices), spin
    boxes (their value, restored only within their range) and line edits (text). Restoring goes through the
    controls' setters, so a dock's own reactions run as if the user had set them (give dependent controls after
    the ones they depend on: a preset before the iterations it sets). A settings file that cannot be written (a
    read-only home) costs only the memory of the settings.
    """

    def __init__(self, dock: str, controls: Mapping[str, QWidget], path: str | Path | None = None):
        self.dock = dock
        self.controls = dict(controls)
        self.path = Path(path) if path is not None else default_path()
        self.skipped: list[str] = []  # stored settings that did not fit their control, by name
        self._restoring = False
        self.restore()
        for control in self.controls.values():  # a closure: it lives as long as the controls (a bound method would not)
            _changed_signal(control).connect(lambda *_args: self.save())

    def values(self) -> dict[str, Value]:
        """The controls' values now, by setting name."""
        return {name: _value(control) for name, control in self.controls.items()}

    def restore(self) -> None:
        """Set each control to its stored value (those that no longer fit are listed in `skipped`)."""
        stored = read_settings(self.path).get(self.dock, {})
        self._restoring = True
        try:
            for name, control in self.controls.items():
                if name in stored and not _set_value(control, stored[name]):
                    self.skipped.append(name)
        finally:
            self._restoring = False

    def save(self) -> None:
        """Write the controls' values (called when one of them changes)."""
        if self._restoring:
            return
        try:
            write_dock_settings(self.path, self.dock, self.values())
        except OSError:
            pass  # a read-only or full home folder: the settings are not remembered, nothing else is affected


def _changed_signal(control: QWidget) -> Any:
    if isinstance(control, QCheckBox):
        return control.toggled
    if isinstance(control, QComboBox):
        return control.currentTextChanged
    if isinstance(control, QLineEdit):
        return control.textChanged
    if isinstance(control, QSpinBox | QDoubleSpinBox):
        return control.valueChanged
    raise TypeError(
        f"cannot remember a {type(control).__name__}: expected a check box, drop-down, spin box or line edit"
    )


def _value(control: QWidget) -> Value:
    if isinstance(control, QCheckBox):
        return control.isChecked()
    if isinstance(control, QComboBox):
        return control.currentText()
    if isinstance(control, QLineEdit):
        return control.text()
    return control.value()


def _set_value(control: QWidget, value: Any) -> bool:
    """Set `control` to `value` if it fits (type, choices, range); whether it did."""
    if isinstance(control, QCheckBox):
        if not isinstance(value, bool):
            return False
        control.setChecked(value)
    elif isinstance(control, QComboBox):
        if not isinstance(value, str) or control.findText(value) < 0:
            return False
        control.setCurrentText(value)
    elif isinstance(control, QLineEdit):
        if not isinstance(value, str):
            return False
        control.setText(value)
    elif isinstance(control, QAbstractSpinBox):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if not control.minimum() <= value <= control.maximum():
            return False
        if isinstance(control, QSpinBox) and value != int(value):
            return False
        control.setValue(int(value) if isinstance(control, QSpinBox) else float(value))
    return True
