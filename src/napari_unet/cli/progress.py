"""What the commands print on stderr while they work: a progress bar, notes, durations and devices in words."""

from __future__ import annotations

import sys
from typing import Any

# the bar of a run that a time budget ends: seconds to a tenth ("16.7/20 s"), not tqdm's raw floats
SECONDS_BAR = "{l_bar}{bar}| {n:.1f}/{total:g} s [{elapsed}<{remaining}{postfix}]"


class Progress:
    """A tqdm progress bar on stderr, or plain lines every ~10% when tqdm is missing; nothing when quiet.

    unit "s" (a run that a time budget ends): the seconds done to a tenth, "16.7/20 s", not tqdm's raw floats.
    """

    def __init__(self, total: float, description: str, unit: str = "it", quiet: bool = False):
        self.total, self.description, self.unit, self.quiet = total, description, unit, quiet
        self.done = 0.0
        self._bar = None
        self._last_line = -1
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        bar_format = SECONDS_BAR if unit == "s" else None
        self._bar = tqdm(
            total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True, bar_format=bar_format
        )

    def update(self, n: float = 1, **postfix: Any) -> None:
        self.done += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=not n)
            if n:
                self._bar.update(n)
        elif n and not self.quiet:
            tenth = int(10 * self.done / self.total) if self.total else 10
            if tenth > self._last_line or self.done >= self.total:
                self._last_line = tenth
                extra = "".join(f", {k} {v}" for k, v in postfix.items())
                done = f"{self.done:.1f}" if self.unit == "s" else f"{self.done:g}"
                print(f"{self.description}: {done}/{self.total:g} {self.unit}{extra}", file=sys.stderr)

    def write(self, message: str) -> None:
        """A line on stderr that does not break the bar."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def note(message: str, quiet: bool = False) -> None:
    """A line on stderr, unless quiet."""
    if not quiet:
        print(message, file=sys.stderr)


def warn_unmatched(match, what: tuple[str, str], quiet: bool) -> None:
    """A note for each side of a `pipeline.FileMatch` that has files without a partner (the first five named)."""
    for files, text in zip((match.unmatched_first, match.unmatched_second), what):
        if files:
            shown = ", ".join(p.name for p in files[:5]) + (", ..." if len(files) > 5 else "")
            note(f"note: {len(files)} {text}: {shown}", quiet)


def describe(device) -> str:
    from ..device import describe_device

    return describe_device(device)


def duration(seconds: float) -> str:
    """A duration for people: "12.3 s", "4 min 05 s", "2 h 03 min".

    >>> duration(12.34), duration(245), duration(7380)
    ('12.3 s', '4 min 05 s', '2 h 03 min')
    """
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def note_shadowed(model: str, quiet: bool) -> None:
    """Say so when a local model folder is used in place of the built-in model of the same name."""
    from ..builtin import shadowed

    if shadowed(model):
        note(
            f"note: using the model folder ./{model}, not the built-in model '{model}' (builtin:{model} for that)",
            quiet,
        )
