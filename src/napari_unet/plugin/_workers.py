"""Starting the docks' worker threads so that none outlives its dock or the application.

A worker started here is asked to quit when the widget that owns it is destroyed (its dock closed, the window
closed); generator workers stop at their next `yield` (one tile, one training step). At interpreter exit the
remaining workers are asked to quit and awaited: a thread still emitting Qt signals while Python tears the
application down aborts the process.
"""

from __future__ import annotations

import atexit
from typing import Any

_RUNNING: set[Any] = set()
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


def await_workers(msecs: int = EXIT_WAIT_MS) -> bool:
    """Ask every running worker to quit and wait up to `msecs` for all threads; True when they all ended."""
    from qtpy.QtCore import QThreadPool

    for worker in list(_RUNNING):
        worker.quit()
    return bool(QThreadPool.globalInstance().waitForDone(msecs))


def alive(widget: Any) -> bool:
    """False once Qt has deleted `widget` (a late worker result must then be dropped)."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True
