"""Starting the docks' worker threads so that none outlives its dock or the application.

A worker started here is asked to quit when the widget that owns it is destroyed (the window closed); a dock's
'x' takes the dock out of the window without destroying it, which `stop_when_closed` catches. Generator workers
stop at their next `yield` (one tile, one training step). At interpreter exit the remaining workers are asked to
quit and awaited: a thread still emitting Qt signals while Python tears the application down aborts the process.
Then the generators of the workers are closed, so that their `finally` blocks run (a training run saves its last
completed step): napari's quit() leaves them open, and the docks close them from slots that the event loop,
stopped by then, would never run.
"""

from __future__ import annotations

import atexit
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from qtpy.QtCore import QEvent, QObject

_RUNNING: set[Any] = set()
_GENERATORS: weakref.WeakSet = weakref.WeakSet()  # of the generator workers, closed at exit
_EXIT_HOOK: list[bool] = []
EXIT_WAIT_MS = 30_000


def start_worker(worker: Any, owner: Any = None) -> Any:
    """Start `worker` (a napari/superqt worker not yet started); it quits when `owner` (a QObject) is destroyed."""
    if not _EXIT_HOOK:
        atexit.register(await_workers)
        _EXIT_HOOK.append(True)
    _RUNNING.add(worker)
    worker.finished.connect(lambda: _RUNNING.discard(worker))
    if owner is not None:
        owner.destroyed.connect(worker.quit)
    worker.start()
    return worker


class _ClosedFilter(QObject):
    """Calls `stop` when the widget it watches loses its parent (`stop_when_closed`)."""

    def __init__(self, widget: QObject, stop: Callable[[], Any]):
        super().__init__(widget)
        self.stop = stop
        widget.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange and watched.parent() is None:
            self.stop()
        return False


def stop_when_closed(widget: QObject, stop: Callable[[], Any]) -> None:
    """Call `stop` when `widget`'s dock is closed with its 'x': napari takes the widget out of the window (it
    loses its parent) but does not destroy it, so a run would go on out of sight."""
    _ClosedFilter(widget, stop)


def worker_threads() -> int:
    """Torch threads for a worker: one fewer than the main thread's setting (at least one), read on the main thread.

    With every core busy in torch, the window's repaints and torch's OpenMP threads wait on each other; leaving a
    core to the main thread keeps the window responsive and the work faster (the figures, measured with
    benchmarks/bench_responsiveness.py --threads, are in docs/plugin.md#responsiveness). torch's thread count is
    per thread (the main thread keeps its own), so the worker sets it for itself.
    """
    import torch

    return max(1, torch.get_num_threads() - 1)


def drive(generator: Iterator[Any], threads: int | None = None) -> Iterator[Any]:
    """The worker's generator function: sets this thread's torch threads, then delegates to `generator`, an
    object the caller keeps (to close it)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return (yield from generator)


def generator_worker(generator: Iterator[Any], *, close_when_done: bool = True, **options: Any) -> Any:
    """A napari worker (not started) that runs `generator` with `worker_threads()` torch threads, with napari's
    `_progress`-style `options`.

    napari's quit() stops asking for items but leaves the generator open, so its `finally` blocks (a trainer
    saving its model) would wait for the garbage collector; with `close_when_done` the generator is closed on the
    main thread once the worker has finished.
    """
    from napari.qt.threading import create_worker

    worker = create_worker(drive, generator, worker_threads(), _ignore_errors=True, _start_thread=False, **options)
    _GENERATORS.add(generator)
    if close_when_done:
        worker.finished.connect(generator.close)
    return worker


def await_workers(msecs: int = EXIT_WAIT_MS) -> bool:
    """Ask every running worker to quit and wait up to `msecs` for all threads, then close the generators of the
    generator workers (a training run saves its last step); True when every thread ended."""
    from qtpy.QtCore import QThreadPool

    for worker in list(_RUNNING):
        worker.quit()
    ended = bool(QThreadPool.globalInstance().waitForDone(msecs))
    if ended:  # a generator still running in a thread cannot be closed from here
        for generator in list(_GENERATORS):
            try:
                generator.close()  # a no-op for one that ended or was closed
            except Exception as error:  # noqa: BLE001 - at exit: say it, close the others
                print(f"napari-unet: a background job could not finish cleanly: {error}", file=sys.stderr)
    return ended


def alive(widget: Any) -> bool:
    """False once Qt has deleted `widget` (a late worker result must then be dropped)."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True
