"""A dependency-free live plot of the training loss (left axis) and the validation score (right axis, 0..1)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor(90, 170, 255)
SMOOTH_COLOUR = QColor(255, 255, 255)
SCORE_COLOUR = QColor(120, 220, 120)
AXIS_COLOUR = QColor(150, 150, 150)
MAX_POINTS = 600  # losses are averaged in groups beyond this, so painting stays cheap


class LossPlot(QWidget):
    """Losses (iteration, value) as a thin line with an exponential moving average on top; validation scores
    as dots. Adding a point only schedules a repaint (Qt merges them), so it is cheap on the main thread."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.losses: list[tuple[int, float]] = []
        self.scores: list[tuple[int, float]] = []
        self.total = 1
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def clear(self, total: int = 1) -> None:
        self.losses.clear()
        self.scores.clear()
        self.total = max(int(total), 1)
        self.update()

    def add_loss(self, iteration: int, loss: float) -> None:
        if math.isfinite(loss):
            self.losses.append((int(iteration), float(loss)))
            self.update()

    def add_score(self, iteration: int, score: float) -> None:
        self.scores.append((int(iteration), float(score)))
        self.update()

    def smoothed(self) -> list[tuple[int, float]]:
        """Exponential moving average of the losses (weight 0.9 on the past), bias-corrected."""
        out, average, weight = [], 0.0, 0.0
        for iteration, loss in self.losses:
            average = 0.9 * average + 0.1 * loss
            weight = 0.9 * weight + 0.1
            out.append((iteration, average / weight))
        return out

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        margin_left, margin_right, margin_top, margin_bottom = 42, 34, 8, 18
        area = QRectF(
            margin_left,
            margin_top,
            max(self.width() - margin_left - margin_right, 10),
            max(self.height() - margin_top - margin_bottom, 10),
        )
        painter.setPen(QPen(AXIS_COLOUR, 1))
        painter.drawRect(area)
        top = max((loss for _, loss in self.losses), default=1.0) * 1.05 or 1.0
        total = max(self.total, max((i for i, _ in self.losses), default=1))

        def point(iteration: float, value: float, scale: float) -> QPointF:
            return QPointF(
                area.left() + area.width() * iteration / total,
                area.bottom() - area.height() * min(max(value / scale, 0.0), 1.0),
            )

        painter.drawText(QRectF(0, area.top() - 4, margin_left - 4, 14), int(Qt.AlignmentFlag.AlignRight), f"{top:.3g}")
        painter.drawText(QRectF(0, area.bottom() - 10, margin_left - 4, 14), int(Qt.AlignmentFlag.AlignRight), "0")
        painter.drawText(QRectF(area.right() + 3, area.top() - 4, margin_right, 14), 0, "1")
        painter.drawText(
            QRectF(0, area.bottom() + 2, self.width(), 14),
            int(Qt.AlignmentFlag.AlignCenter),
            f"iteration (of {self.total})   blue: loss   green: IoU on the annotations",
        )
        for points, colour, width in (
            (_decimate(self.losses), LOSS_COLOUR, 1.0),
            (_decimate(self.smoothed()), SMOOTH_COLOUR, 2.0),
        ):
            if len(points) >= 2:
                painter.setPen(QPen(colour, width))
                painter.drawPolyline(QPolygonF([point(i, v, top) for i, v in points]))
        painter.setPen(QPen(SCORE_COLOUR, 1))
        painter.setBrush(SCORE_COLOUR)
        for iteration, score in self.scores:
            painter.drawEllipse(point(iteration, score, 1.0), 3.0, 3.0)
        painter.end()


def _decimate(points: list[tuple[int, float]]) -> list[tuple[float, float]]:
    """At most MAX_POINTS points: means of consecutive groups."""
    if len(points) <= MAX_POINTS:
        return [(float(i), v) for i, v in points]
    group = math.ceil(len(points) / MAX_POINTS)
    out = []
    for start in range(0, len(points), group):
        chunk = points[start : start + group]
        out.append((sum(i for i, _ in chunk) / len(chunk), sum(v for _, v in chunk) / len(chunk)))
    return out
