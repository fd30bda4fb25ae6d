"""What `napari-unet train` and the demo share: consuming `Trainer.run()` with a progress bar, choosing the
post-processing on the validation images, and the one-line summaries of both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._args import EXIT_INTERRUPTED
from .progress import Progress, describe, duration


def train_with_progress(trainer, quiet: bool) -> dict[str, Any]:
    """Consume `trainer.run()` with a progress bar (in steps, or in seconds for a run that only its time budget
    ends); SIGINT (Ctrl-C) or SIGTERM stops it after the current step (closing the generator saves that step);
    result["exit_code"] is then 130 or 143."""
    from contextlib import closing

    from ..train_config import UNTIL_BUDGET
    from ._signals import current

    result: dict[str, Any] = {
        "stopped": False,
        "val_score": None,
        "loss": float("nan"),
        "started_at": trainer.iteration,
        "exit_code": EXIT_INTERRUPTED,
    }
    events = trainer.run()
    timed = trainer.config.iterations == UNTIL_BUDGET and trainer.config.time_budget is not None
    total, unit = (trainer.config.time_budget, "s") if timed else (trainer.config.iterations, "it")
    with Progress(total, "training", unit, quiet) as bar, closing(events), current().deferred() as signals:
        bar.update(min(trainer.elapsed, total) if timed else trainer.iteration)
        try:
            for event in events:
                if event.kind == "step":
                    done = min(event.elapsed, total) - bar.done if timed else 1
                    bar.update(done, loss=f"{event.loss:.4f}")
                elif event.kind == "validation" and event.val_score is not None:
                    result["val_score"] = event.val_score
                    bar.write(f"iteration {event.iteration}: validation IoU {event.val_score:.4f}")
                result.update(iteration=event.iteration, elapsed=event.elapsed, loss=event.loss)
                if signals.received is not None:  # SIGINT or SIGTERM: stop after this step (closing saves it)
                    result.update(stopped=True, exit_code=signals.exit_code)
                    break
        except KeyboardInterrupt:  # a KeyboardInterrupt raised by other means (e.g. in a test)
            result["stopped"] = True
    result["iteration"] = trainer.iteration
    result["elapsed"] = trainer.elapsed
    result["device"] = describe(trainer.device)
    return result


def tune_on_validation(trainer, validation) -> dict[str, Any] | None:
    """Choose the post-processing on the validation samples with instance labels and save it with the model.

    Returns {"config", "scores", "before", "images"} (mean AP50 etc. with the chosen and the previous settings),
    or None when no validation sample is fully annotated with instance labels (binary masks such as ISBI's are
    not).
    """
    from ..postprocess import score_config, tune_config
    from ..targets import annotation_mask, is_binary
    from ..tiling import predict_tiled

    usable = [s for s in validation if s.mask is None and not is_binary(s.labels) and annotation_mask(s.labels).all()]
    if not usable:
        return None
    probs = [predict_tiled(trainer.model, s.image, device=trainer.device)[1] for s in usable]
    truths = [np.asarray(s.labels).astype(np.int64) for s in usable]
    before = score_config(trainer.postprocess, probs, truths)
    config, scores = tune_config(probs, truths, trainer.postprocess)
    trainer.postprocess = config
    if trainer.checkpoint is not None:
        trainer.save_checkpoint(trainer.checkpoint)
    return {"config": config, "scores": scores, "before": before, "images": len(usable)}


def describe_tuning(tuned: dict[str, Any]) -> str:
    config = tuned["config"]
    return (
        f"post-processing tuned on {tuned['images']} validation image(s): threshold {config.threshold}, "
        f"watershed {'on' if config.watershed else 'off'}, growth to {growth(config)} "
        f"(AP50 {tuned['scores']['ap50']:.3f}, "
        f"{tuned['before']['ap50']:.3f} before); saved with the model"
    )


def growth(config: Any) -> str:
    """How far objects grow (post-processing step 5), in words: "p > 0.1", or "off"."""
    return f"p > {config.grow_threshold}" if config.grows else "off"


def summary(result: dict[str, Any], out: Path) -> str:
    score = result["val_score"]
    validation = f"validation IoU {score:.4f}" if score is not None else "no validation images"
    return (
        f"trained {result['iteration']} iterations in {duration(result['elapsed'])} on {result['device']}: "
        f"loss {result['loss']:.4f}, {validation}; model saved to {out}"
    )
