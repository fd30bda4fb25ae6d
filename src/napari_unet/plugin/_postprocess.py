"""The Segment dock's post-processing controls: threshold, seeds, growth, minimum size, watershed and flood, read
as a `PostprocessConfig` and set from a model's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from napari_unet.postprocess import PostprocessConfig

from ._form import check, spin


class PostprocessFields:
    """Spin boxes for the threshold, the seed threshold ("seeds p >"), the growth threshold ("grow to p >") and the
    minimum size, and watershed and flood check boxes; `config` reads them over a model's post-processing, `show`
    sets them from one."""

    def __init__(self) -> None:
        self.threshold = spin(0.0, 1.0, 0.0, step=0.05, decimals=2)
        self.seeds = spin(
            0.0,
            1.0,
            0.0,
            step=0.05,
            decimals=3,
            tooltip=(
                "Objects start from their cores, the pixels whose probability is above this value, and spread over "
                "the foreground: touching cells part where the network is least sure. Off at 0 (or at the "
                "threshold or below)"
            ),
        )
        self.seeds.setSpecialValueText("off")  # 0: a value of its own, so changing the threshold never turns seeds on
        self.grow = spin(
            0.0,
            1.0,
            0.0,
            step=0.05,
            decimals=2,
            tooltip=(
                "Objects grow into the neighbouring pixels whose probability is above this value (cells come out at "
                "their full size; none merge). Off at 0 (or at the threshold or above)"
            ),
        )
        self.grow.setSpecialValueText("off")  # as the seeds: at "off", raising the threshold never turns growth on
        self.min_size = spin(0, 100000, 0)
        self.split = check(
            "split merged cells (watershed)",
            tooltip=(
                "Seeded watershed on the distance transform: splits touching cells that the network's borders left "
                "merged"
            ),
        )
        self.flood = check(
            "cells fill the image (membranes)",
            tooltip=(
                "For cells parted only by thin membranes (electron micrographs): the objects above the threshold "
                "grow through every pixel until they meet, with a 1-pixel line between them; a faint membrane "
                "still parts two cells"
            ),
        )

    def rows(self) -> list[tuple[str, Any]]:
        """The (label, control) rows of a `_form.form`."""
        return [
            ("threshold", self.threshold),
            ("seeds p >", self.seeds),
            ("grow to p >", self.grow),
            ("min. size (px)", self.min_size),
            ("", self.split),
            ("", self.flood),
        ]

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` (no argument) whenever the user changes a control."""
        for box in (self.threshold, self.seeds, self.grow, self.min_size):
            box.valueChanged.connect(lambda _value: callback())
        for box in (self.split, self.flood):
            box.toggled.connect(lambda _checked: callback())

    def config(self, base: PostprocessConfig) -> PostprocessConfig:
        """`base` with the controls' threshold, seeds (None when off), growth (None when off or at the threshold or
        above), minimum size, watershed and flood."""
        threshold, grow = float(self.threshold.value()), float(self.grow.value())
        seeds = float(self.seeds.value()) or None
        return replace(
            base,
            threshold=threshold,
            seed_threshold=seeds,
            grow_threshold=grow if 0 < grow < threshold else None,
            min_size=int(self.min_size.value()),
            watershed=self.split.isChecked(),
            flood=self.flood.isChecked(),
        )

    def show(self, config: PostprocessConfig) -> None:
        """Set the controls from `config` without announcing a change."""
        widgets = (self.threshold, self.seeds, self.grow, self.min_size, self.split, self.flood)
        for widget in widgets:
            widget.blockSignals(True)
        self.threshold.setValue(config.threshold)
        self.seeds.setValue(config.cores_above or 0.0)
        self.grow.setValue(config.grow_threshold if config.grows else 0.0)  # inactive growth shows as off
        self.min_size.setValue(config.min_size)
        self.split.setChecked(config.watershed)
        self.flood.setChecked(config.flood)
        for widget in widgets:
            widget.blockSignals(False)
