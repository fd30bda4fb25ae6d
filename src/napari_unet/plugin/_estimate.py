"""The Fine-tune dock's estimate of a run's time: one training step measured in a worker
(`jobs.finetune.measure_steps`) once per setting (network, tile size, batch size, device), times the iterations,
within the time budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari_unet.device import describe_device, select_device
from napari_unet.jobs.finetune import format_duration, measure_steps

from ._form import wrapped_label
from ._workers import alive, generator_worker, start_worker


class StepEstimate:
    """A line that says the seconds per step and the time of the run; it follows the `iterations` and `budget`
    (minutes, 0: none) spin boxes. measured: called with the seconds per step of each new measurement."""

    def __init__(self, dock: Any, iterations: Any, budget: Any, measured: Callable[[float], Any]):
        self.dock, self.iterations, self.budget, self.measured = dock, iterations, budget, measured
        self.label = wrapped_label()
        self.seconds: dict[tuple, float] = {}  # per setting: (network config, tile size, batch size, device)
        self.key: tuple | None = None
        self.worker: Any = None
        iterations.valueChanged.connect(lambda _value: self.show())
        budget.valueChanged.connect(lambda _value: self.show())

    def update(self, key: tuple) -> Any:
        """Show the estimate for the setting `key` (`jobs.finetune.step_setting`), measuring a step in a worker
        the first time; returns the worker, or None when the setting was measured before."""
        self.key = key
        if key in self.seconds:
            self.show()
            return None
        config, tile, batch, device = key
        self.label.setText(f"{describe_device(select_device(device))}: measuring a training step…")
        if self.worker is not None:
            self.worker.quit()  # superseded
        worker = generator_worker(measure_steps(config, tile, batch, device))
        worker.returned.connect(lambda seconds: alive(self.dock) and self._measured(key, seconds))
        worker.errored.connect(lambda error: alive(self.dock) and self.label.setText(f"cannot measure a step: {error}"))
        self.worker = worker
        start_worker(worker, self.dock)
        return worker

    def show(self) -> None:
        if self.key not in self.seconds:
            return
        seconds = self.seconds[self.key]
        total = seconds * self.iterations.value()
        budget = self.budget.value() * 60.0
        if budget:
            total = min(total, budget)
        self.label.setText(
            f"{describe_device(select_device(self.key[3]))}: {seconds:.2f} s per step (measured), "
            f"about {format_duration(total)} for this run"
        )

    def _measured(self, key: tuple, seconds: float) -> None:
        self.seconds[key] = seconds
        self.show()
        self.measured(seconds)
