"""What the docks of one viewer share: the current model, where it lives on disk, who is using it.

The Fine-tune dock puts the model it trained here, the Segment dock and the model reader take it from here, so
a model trained a minute ago is the one that segments the next image (human in the loop).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

from napari_unet.augment import AugmentConfig
from napari_unet.builtin import BUILTIN_DIR
from napari_unet.modelfile import ModelBundle, load_model, save_model
from napari_unet.modelfolder import check_save_target


@dataclass
class TrainingRun:
    """The history of one Fine-tune run: (iteration, loss) and (iteration, validation score) pairs."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    scores: list[tuple[int, float]] = field(default_factory=list)
    saved_to: Path | None = None
    stopped: bool = False


class Session:
    """Per-viewer state. `model_changed` is emitted (on the main thread) whenever `bundle` is replaced,
    `model_loaded` after it when the user loaded that model (`use_loaded`), `training_changed` (with the new
    value) whenever `training` changes."""

    model_changed = Signal(object)
    model_loaded = Signal(object)
    training_changed = Signal(bool)

    def __init__(self) -> None:
        self.bundle: ModelBundle | None = None
        self.model_path: Path | None = None
        self._training = False
        self.segmenting = False  # a Segment run is using the model: training must wait
        self.readers = 0  # other workers reading the model (uncertainty, suggestions): training must wait too
        self.augment: AugmentConfig | None = None  # set by the Augmentation preview; None: the preset's

    @property
    def training(self) -> bool:
        """Whether a Fine-tune run owns the model: others must not use it meanwhile, nor load another one (the run
        puts its own in the session when it ends). Set by the Fine-tune dock."""
        return self._training

    @training.setter
    def training(self, training: bool) -> None:
        if training != self._training:
            self._training = training
            self.training_changed.emit(training)

    @property
    def busy(self) -> bool:
        """Whether a worker is using the model (a Segment run, the uncertainty, suggestions): no training now."""
        return self.segmenting or self.readers > 0

    def hold(self) -> Callable[[], None]:
        """Count a worker reading the model until the returned function is called (once; later calls do nothing):
        connect it to the worker's `finished`, which comes on return, error and quit alike."""
        self.readers += 1
        released: list[bool] = []

        def release() -> None:
            if not released:
                released.append(True)
                self.readers -= 1

        return release

    def set_model(self, bundle: ModelBundle, path: str | Path | None = None) -> None:
        self.bundle = bundle
        self.model_path = Path(path) if path is not None else None
        self.model_changed.emit(bundle)

    def load_model(self, path: str | Path) -> bool:
        """Load a model folder as the session's model; a running training or a folder that cannot be loaded is a
        notification (False)."""
        if self.training:
            show_warning(
                "A Fine-tune run is using the model: stop it or wait for it to finish before loading another model"
            )
            return False
        try:
            bundle = load_model(path)
        except (OSError, ValueError) as error:
            show_error(f"Cannot load the model: {error}")
            return False
        self.use_loaded(bundle, path)
        return True

    def use_loaded(self, bundle: ModelBundle, path: str | Path) -> None:
        """Make a model the user loaded (Load model…, a model folder dropped on the window) the session's model:
        the Segment dock segments with it and the Fine-tune dock starts from it (`model_loaded`)."""
        self.set_model(bundle, path)
        self.model_loaded.emit(bundle)

    def save_model(self, path: str | Path) -> Path | None:
        """Save the session's model to the folder `path` (it is then the model's folder); no model, a running
        training, a folder that holds something else than a napari-unet model (`modelfolder.check_save_target`:
        the user's data is never replaced) or a failed write is a notification (None)."""
        if self.bundle is None:
            show_error("No model to save yet: train one first (or load one)")
            return None
        if self.training:
            show_warning("Training is running: the model is autosaved at the end and at Stop")
            return None
        try:
            check_save_target(path)
            saved = save_model(path, self.bundle)
        except (OSError, ValueError) as error:
            show_error(f"Cannot save the model: {error}")
            return None
        self.set_model(self.bundle, saved)
        show_info(f"Model saved to {saved}")
        return saved

    def use_builtin(self, name: str) -> bool:
        """Make the built-in model `name` the session's model; False (and no change) when it is not installed."""
        from napari_unet.builtin import names, path

        if name not in names():
            return False
        self.set_model(load_model(path(name)), path(name))
        return True

    def describe_model(self) -> str:
        """One line for the docks: 'depth 4, 16 channels, 400 iterations (autosave/cells-...)'."""
        if self.bundle is None:
            return "no model yet: train one (Fine-tune) or load a saved model folder"
        config = self.bundle.net.config
        parts = [f"depth {config.depth}", f"{config.base_channels} channels"]
        if config.in_channels > 1:
            parts.append(f"{config.in_channels} input channels")
        iterations: Any = self.bundle.metadata.get("iterations")
        if iterations:
            parts.append(f"{iterations} iterations")
        where = f" ({self.model_path.name})" if self.model_path is not None else " (not saved)"
        if self.model_path is not None and self.model_path.parent == BUILTIN_DIR:
            where = f" (built-in: {self.model_path.name})"
        if self.bundle.object_diameter is not None:
            parts.append(f"objects {self.bundle.object_diameter:g} px")
        return ", ".join(parts) + where


_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """The session of `viewer` (created on first use). Accepts napari's public-only proxy of the viewer."""
    key = getattr(viewer, "__wrapped__", viewer)
    session = _SESSIONS.get(key)
    if session is None:
        session = _SESSIONS[key] = Session()
    return session
