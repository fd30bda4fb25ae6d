"""The docks' controls in one call each: spin boxes, sliders, check boxes, drop-downs, and the dock layout.

A dock's `__init__` then reads as a list of its controls and a list of its rows:

    self.iterations_spin = spin(1, 1_000_000, 400)
    dock_layout(self, form(("iterations", self.iterations_spin), ("", self.whole_check)), self.status)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLayout,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)


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
