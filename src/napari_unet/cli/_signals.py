"""SIGINT (Ctrl-C) and SIGTERM (`kill`, SLURM, systemd): stop cleanly, and at once when asked twice.

`main` installs one `SignalGuard` for the whole command. The first signal raises `Interrupted` (a
KeyboardInterrupt) where the program is, so every `finally` runs: a prediction removes its unfinished temporary
files, nothing that looks finished is left. Inside `guard.deferred()` (the training loop) the first signal only
sets `guard.received`: the loop stops at the next step and the trainer saves that step (before the run's first
step, while its data are prepared, it stops at once: there is nothing to save). A second signal exits at
once (`os._exit`); every file is written under a temporary name and renamed when complete, so what is on disk is
either a complete file or a hidden `.<name>.<pid>.*.tmp`, which the next write of that file removes. What must not
outlive the process even then (train's lock file beside --out) is removed first (`SignalGuard.before_exit`).

The processes `train --gpus N` starts ignore a repeated signal: the one that started them passes its signals on
and ends them at once on its own second signal (`cli.train._spawn`).

Exit codes: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The command was stopped by `signum`; `exit_code` is 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def _never() -> bool:
    return False


class SignalGuard:
    """The handler of SIGINT and SIGTERM while a command runs (see the module's docstring)."""

    def __init__(self, repeats_ignored: bool = False) -> None:
        self.received: int | None = None
        self.repeats_ignored = repeats_ignored
        self._deferring = False
        self._immediate: Callable[[], bool] = _never
        self._before_exit: list[Callable[[], None]] = []

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)

    def handle(self, signum: int, frame) -> None:
        if self.received is not None and self.repeats_ignored:
            return
        if self.received is not None:
            name = signal.Signals(signum).name
            print(f"napari-unet: second signal ({name}): exiting at once", file=sys.stderr, flush=True)
            for action in reversed(self._before_exit):
                try:
                    action()
                except Exception:  # exiting at once all the same
                    pass
            os._exit(128 + signum)
        self.received = signum
        if not self._deferring or self._immediate():
            raise Interrupted(signum)

    @contextmanager
    def before_exit(self, action: Callable[[], None]) -> Iterator[None]:
        """Within the block, a second signal runs `action` (something quick: removing a lock file) before it
        exits at once."""
        self._before_exit.append(action)
        try:
            yield
        finally:
            self._before_exit.remove(action)

    @contextmanager
    def deferred(self, immediate: Callable[[], bool] = _never) -> Iterator[SignalGuard]:
        """Within the block the first signal only sets `received`: the caller stops at its next step; unless
        `immediate()` says there is nothing to finish yet (no step taken: the data still being prepared, which
        can take minutes), when it raises `Interrupted` at once, as outside the block."""
        self._deferring, self._immediate = True, immediate
        try:
            yield self
        finally:
            self._deferring, self._immediate = False, _never


_current: SignalGuard | None = None


@contextmanager
def installed(repeats_ignored: bool = False) -> Iterator[SignalGuard]:
    """Install a fresh `SignalGuard` for SIGINT and SIGTERM (main thread only), restoring the old handlers after.

    repeats_ignored: a second signal does nothing, for a process whose starter passes its signals on and ends it
    on a second one (`train --gpus`: the same Ctrl-C may reach it twice, from the terminal and from its starter).
    """
    global _current
    guard = SignalGuard(repeats_ignored)
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    outer, _current = _current, guard
    for s in SIGNALS:
        signal.signal(s, guard.handle)
    try:
        yield guard
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _current = outer


def current() -> SignalGuard:
    """The guard of the running command (a detached one when none is installed, e.g. a library call)."""
    return _current if _current is not None else SignalGuard()
