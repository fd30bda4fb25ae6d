"""The docks' controls in one call each: spin boxes, sliders, check boxes, drop-downs, labels, the run row
(buttons, progress bar, status line), the model row (the session's model and "Load model…"), and the dock layout.

A dock's `__init__` then reads as a list of its controls and a list of its rows:

    self.iterations_spin = spin(1, 1_000_000, 400)
    self.controls = RunControls(("Run", self.run), ("Cancel", self.cancel))
    dock_layout(self, form(("iterations", self.iterations_spin)), *self.controls.items())
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QValidator
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._workers import alive


def spin(
    low: float,
    high: float,
    value: float,
    *,
    step: float = 1,
    decimals: int | None = None,
    special: str = "",
    suffix: str = "",
    tooltip: str = "",
) -> QSpinBox | QDoubleSpinBox:
    """A spin box over [low, high] at `value`: a QSpinBox, or a QDoubleSpinBox with `decimals`; `special`: the text
    shown at `low` (e.g. "auto", "none")."""
    box = QSpinBox() if decimals is None else QDoubleSpinBox()
    box.setRange(low, high)
    if decimals is not None:
        box.setDecimals(decimals)
    box.setSingleStep(step)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    if suffix:
        box.setSuffix(suffix)
    if tooltip:
        box.setToolTip(tooltip)
    return box


class DurationSpin(QDoubleSpinBox):
    """A spin box of a duration whose value is in minutes (0: `special`, e.g. "none"), shown as "20 s" below a
    minute and "5 min" or "1 min 30 s" above; typed as that, as "2m" or "1 h", or as a bare number of minutes.
    (A box of one decimal in minutes showed 20 s as "0.3 min" and kept 18 s.)
    """

    UNITS = {"h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}  # "min" before "m": the alternation tries it first
    PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(h|min|m|s)?\s*")
    TYPING = re.compile(r"[\d.\shmins]*")  # what may still become a duration

    def __init__(self, high: float, value: float, *, special: str = "", step: float = 1.0, tooltip: str = ""):
        """high, value, step: minutes."""
        super().__init__()
        self.setDecimals(6)  # minutes to a ten-thousandth of a second: a duration typed in seconds is kept
        self.setRange(0.0, high)
        self.setSingleStep(step)
        self.setValue(value)
        if special:
            self.setSpecialValueText(special)
        if tooltip:
            self.setToolTip(tooltip)

    def seconds(self) -> float:
        """The duration in seconds (to a millisecond: minutes of six decimals are not whole seconds)."""
        return round(self.value() * 60.0, 3)

    def textFromValue(self, value: float) -> str:  # noqa: N802 (Qt's name)
        seconds = round(value * 60.0, 1)
        if seconds < 60:
            return f"{seconds:g} s"
        minutes, rest = divmod(seconds, 60.0)
        rest = round(rest, 1)
        return f"{minutes:.0f} min" + (f" {rest:g} s" if rest else "")

    def valueFromText(self, text: str) -> float:  # noqa: N802 (Qt's name)
        seconds = self._seconds_in(text)
        return self.minimum() if seconds is None else seconds / 60.0

    def validate(self, text: str, position: int) -> tuple[QValidator.State, str, int]:
        special = self.specialValueText()
        seconds = self._seconds_in(text)
        if seconds is not None and self.minimum() <= seconds / 60.0 <= self.maximum():
            state = QValidator.State.Acceptable
        elif special and text == special:
            state = QValidator.State.Acceptable
        elif (special and special.startswith(text)) or self.TYPING.fullmatch(text.lower()):
            state = QValidator.State.Intermediate
        else:
            state = QValidator.State.Invalid
        return state, text, position

    def _seconds_in(self, text: str) -> float | None:
        """The seconds `text` says ("20 s", "1 min 30 s", "1.5 h", a bare number of minutes), None if none."""
        text, position, seconds = text.strip().lower(), 0, 0.0
        while position < len(text):
            match = self.PART.match(text, position)
            if match is None:
                return None
            number, unit = match.groups()
            if unit is None and (position > 0 or match.end() < len(text)):  # a bare number only alone
                return None
            seconds += float(number) * self.UNITS[unit or "min"]
            position = match.end()
        return seconds if text else None


def slider(low: float, high: float, value: float, decimals: int = 1) -> Any:
    """A horizontal slider with its value shown beside it (superqt's QLabeledDoubleSlider)."""
    from superqt import QLabeledDoubleSlider

    widget = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
    widget.setRange(low, high)
    widget.setDecimals(decimals)
    widget.setValue(value)
    return widget


def check(text: str, checked: bool = False, tooltip: str = "") -> QCheckBox:
    box = QCheckBox(text)
    box.setChecked(checked)
    if tooltip:
        box.setToolTip(tooltip)
    return box


def choice(items: Sequence[str]) -> QComboBox:
    """A drop-down of fixed texts, the first one chosen."""
    combo = QComboBox()
    combo.addItems(list(items))
    return combo


def form(*rows: tuple[str, Any]) -> QFormLayout:
    """Rows of (label, control); magicgui widgets are accepted (their `.native` is added)."""
    layout = QFormLayout()
    for label, widget in rows:
        layout.addRow(label, getattr(widget, "native", widget))
    return layout


def row(*widgets: QWidget, stretch: Sequence[int] = ()) -> QHBoxLayout:
    """Widgets side by side; `stretch`: their stretch factors (default 0 each)."""
    layout = QHBoxLayout()
    for index, widget in enumerate(widgets):
        layout.addWidget(widget, stretch[index] if index < len(stretch) else 0)
    return layout


def dock_layout(dock: QWidget, *items: QLayout | QWidget | tuple[QWidget, int] | None) -> QVBoxLayout:
    """The dock's vertical layout: layouts and widgets top to bottom, (widget, stretch) for one that grows, and
    None for a stretch that keeps everything at the top."""
    layout = QVBoxLayout(dock)
    for item in items:
        if item is None:
            layout.addStretch(1)
        elif isinstance(item, QLayout):
            layout.addLayout(item)
        elif isinstance(item, tuple):
            layout.addWidget(*item)
        else:
            layout.addWidget(item)
    return layout


def wrapped_label(text: str = "", lines: int = 2) -> QLabel:
    """A word-wrapped QLabel tall enough for `lines` lines (dock layouts otherwise clip wrapped text)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setMinimumHeight(label.fontMetrics().lineSpacing() * lines + 4)
    return label


class RunControls:
    """A dock's run row: its buttons side by side (the first starts a job, the others act on a running one),
    a progress bar and a status line of `status_lines` lines.

    `running(True)` disables the first button and enables the others; `begin` starts the progress bar too.
    """

    def __init__(self, *buttons: tuple[str, Callable[[], Any]], status_lines: int = 3):
        """buttons: (text, what a click calls), the one that starts a job first."""
        self.buttons = [QPushButton(text) for text, _ in buttons]
        for button, (_, clicked) in zip(self.buttons, buttons):
            button.clicked.connect(clicked)
        self.row = row(*self.buttons)
        self.progress = QProgressBar()
        self.status = wrapped_label(lines=status_lines)
        self.running(False)

    def items(self) -> tuple[QLayout, QProgressBar, QLabel]:
        """The buttons' row, the progress bar and the status line, top to bottom, for `dock_layout`."""
        return self.row, self.progress, self.status

    def running(self, running: bool) -> None:
        first, *others = self.buttons
        first.setEnabled(not running)
        for button in others:
            button.setEnabled(running)

    def begin(self, total: int, text: str) -> None:
        """A job starts: a progress bar of `total` steps (0: busy, no count), `text` on the status line."""
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.status.setText(text)
        self.running(True)


class ModelRow:
    """The session's model in a dock: a line that describes it (kept up to date) and a "Load model…" button
    (a folder dialog, then `load`, by default `Session.load_model`: a folder that cannot be loaded is a
    notification); with `save`, a "Save model…" button too (a dialog, then `Session.save_model`)."""

    def __init__(
        self,
        dock: QWidget,
        session: Any,
        prefix: str = "",
        load: Callable[[str], Any] | None = None,
        save: bool = False,
    ):
        self.dock, self.session, self.prefix = dock, session, prefix
        self.load = load or session.load_model
        self.label = wrapped_label()
        self.load_button = QPushButton("Load model…")
        self.load_button.clicked.connect(self._ask_folder)
        self.save_button = QPushButton("Save model…") if save else None
        if save:
            self.save_button.clicked.connect(self._ask_save)
        session.model_changed.connect(self.show)
        self.show()

    def rows(self) -> list[tuple[str, Any]]:
        """The (label, control) rows of a `form`: the description, then the button under it."""
        return [("model", self.label), ("", self.load_button)]

    def show(self, _bundle: Any = None) -> None:
        if alive(self.dock):  # the session outlives a closed dock
            self.label.setText(self.prefix + self.session.describe_model())

    def _ask_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self.dock, "Model folder (config.json + weights.safetensors)")
        if path:
            self.load(path)

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.dock, "Save the model as a folder")
        if path:
            self.session.save_model(path)
