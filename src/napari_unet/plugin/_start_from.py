"""The Fine-tune dock's "start from" choice: the built-in model (first and default when installed), a new
network, the session's model or a saved model folder (asked for when chosen)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from napari_unet import builtin
from napari_unet.modelfile import ModelBundle, load_model

from ._form import choice
from ._layers import LayerProblem

START_NEW, START_SESSION, START_FILE = "new network", "the session's model", "a saved model…"
BUILTIN_MODEL = "nuclei"  # the built-in model offered as a starting point (first and default when installed)
START_BUILTIN = f"{BUILTIN_MODEL} (built-in)"


class StartFrom:
    """A drop-down of the models a run can start from; `bundle()` is the chosen one (None: a new network).

    first: the first choice (default: the first entry); changed: called after every change of choice, once the
    chosen model folder (if any) is loaded.
    """

    def __init__(self, dock: Any, session: Any, first: str | None, changed: Callable[[], None]):
        self.dock, self.session, self.changed = dock, session, changed
        self.saved: ModelBundle | None = None  # a model loaded from disk to start from
        self.saved_path: Path | None = None
        self.builtin: ModelBundle | None = None  # the built-in model, loaded when first chosen
        names = [START_BUILTIN] if BUILTIN_MODEL in builtin.names() else []
        self.combo = choice(names + [START_NEW, START_SESSION, START_FILE])
        self.combo.setCurrentText(first or self.combo.itemText(0))
        self._asked = False  # the folder was just asked for by a change of choice: its `activated` asks not again
        self.combo.currentTextChanged.connect(self._chosen)
        self.combo.activated.connect(self._activated)  # picked, changed or not (after currentTextChanged)

    def text(self) -> str:
        return self.combo.currentText()

    def choose(self, text: str) -> None:
        self.combo.setCurrentText(text)

    def bundle(self) -> ModelBundle | None:
        """The model the choice names (None: a new network, or none there yet)."""
        start = self.text()
        if start == START_BUILTIN and self.builtin is None:
            self.builtin = load_model(builtin.path(BUILTIN_MODEL))
        return {START_SESSION: self.session.bundle, START_FILE: self.saved, START_BUILTIN: self.builtin}.get(start)

    def refresh(self) -> None:
        """Apply the current choice as a change of choice does (a saved model's folder is asked for)."""
        self._chosen(self.text())

    def check(self) -> None:
        """A LayerProblem when the chosen model is missing."""
        if self.text() == START_SESSION and self.session.bundle is None:
            raise LayerProblem("The session has no model yet: start from a new model or load one")
        if self.text() == START_FILE and self.saved is None:
            raise LayerProblem("No saved model chosen: pick 'a saved model…' again to choose its folder")

    def _chosen(self, text: str) -> None:
        """A change of choice: 'a saved model…' asks for its folder each time it is chosen (cancelled: the folder
        chosen before, if any, else a new network)."""
        if text == START_FILE:  # the `activated` of this very pick (if picked) comes before the event loop turns
            self._asked = True
            QTimer.singleShot(0, lambda: setattr(self, "_asked", False))
        if text == START_FILE and not self._ask():
            return
        self.changed()

    def _activated(self, _index: int) -> None:
        """'a saved model…' picked again while chosen: ask for another folder."""
        if self.text() == START_FILE and not self._asked and self._ask():
            self.changed()

    def _ask(self) -> bool:
        """Ask for a model folder to start from; False when none is chosen now (cancelled with none before, or
        not loadable: a new network is chosen instead)."""
        path = QFileDialog.getExistingDirectory(self.dock, "Model folder to start from")
        if path:
            try:
                self.saved, self.saved_path = load_model(path), Path(path)
                return True
            except (OSError, ValueError) as error:
                show_error(f"Cannot load the model: {error}")
        if self.saved is not None:  # cancelled, or not loadable: the folder chosen before stays
            return True
        self.choose(START_NEW)
        return False
