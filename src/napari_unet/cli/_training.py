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
    ends); SIGINT (Ctrl-C) or SIGTERM stops it after the current step (closing the generator saves that step), or
    at once before the run's first step (its data being prepared: nothing to save); result["exit_code"] is then
    130 or 143. A signal in the last step, or after it, lets the run finish. With several processes (`ddp.py`),
    all stop after the step in which one of them received a signal."""
    from contextlib import closing

    from .. import ddp
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
    first_step = lambda: trainer.iteration == result["started_at"]  # noqa: E731 - nothing to save before it
    with Progress(total, "training", unit, quiet) as bar, closing(events), current().deferred(first_step) as signals:
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
                # SIGINT or SIGTERM: stop after this step (closing saves it); after the last one the run finishes
                # (fit of the post-processing, save), which --resume of a run with no step left would not do
                received = signals.received
                if trainer.world_size > 1:  # all after the same step (the first one has events of its own)
                    received = ddp.agreed_signal(received) if event.kind == "step" else None
                if received is not None and not trainer.finished:
                    result.update(stopped=True, exit_code=128 + received)
                    break
        except KeyboardInterrupt as interrupt:  # before the first step (`first_step`), or raised by other means
            result.update(stopped=True, exit_code=getattr(interrupt, "exit_code", EXIT_INTERRUPTED))
    result["iteration"] = trainer.iteration
    result["elapsed"] = trainer.elapsed
    result["device"] = describe(trainer.device)
    return result


def tune_on_validation(trainer) -> dict[str, Any] | None:
    """Choose the post-processing on the trainer's validation samples annotated everywhere and save it with the
    model.

    The samples as the trainer prepared them (`Trainer.validation`): inverted as its normalisation says and, for
    a model with an object diameter, rescaled to it, so the network sees what it saw in training and what
    `predict` gives it. Instance labels: threshold, watershed, seeds and growth by mAP
    (`postprocess.tune_config`); a model whose labels flood membrane masks (`PostprocessConfig.flood`): the seed
    threshold by thinned V_rand on the validation masks (`postprocess.fit_flood_seeds`). Returns {"config",
    "scores", "before", "images", "by"} (the mean scores with the chosen and the previous settings; "by": "ap50"
    or "vrand", the score to report), or None when no validation sample fits.
    """
    from ..postprocess import fit_flood_seeds, score_config, score_membranes, tune_config, tuning_record
    from ..training import annotated_everywhere

    flood = trainer.postprocess.flood
    usable = annotated_everywhere(trainer.validation, binary=flood)
    if not usable:
        return None
    probs = [trainer.predict_prepared(p) for p in usable]
    if flood:
        truths = [p.target != 0 for p in usable]
        before = score_membranes(trainer.postprocess, probs, truths)
        config = fit_flood_seeds(probs, truths, trainer.postprocess, tolerance=0.0)[0]  # new images: the best
        scores = score_membranes(config, probs, truths)
    else:
        truths = [p.cells.astype(np.int64) for p in usable]
        before = score_config(trainer.postprocess, probs, truths)
        config, scores = tune_config(probs, truths, trainer.postprocess)
    previous, trainer.postprocess = trainer.postprocess, config
    by = "vrand" if flood else "ap50"  # the score reported; instance labels are ranked by mAP first
    trainer.metadata["postprocess_tuning"] = tuning_record(  # saved with the model, beside the end-of-run fit
        images=f"{len(usable)} validation image(s)",
        by="vrand" if flood else "map, ap50",
        before=before,
        before_config=previous,
        scores=scores,
        chosen=config,
    )
    if trainer.checkpoint is not None:
        trainer.save_checkpoint(trainer.checkpoint)
    return {
        "config": config,
        "scores": scores,
        "before": before,
        "images": len(usable),
        "by": by,
    }


def describe_tuning(tuned: dict[str, Any]) -> str:
    config, by = tuned["config"], tuned["by"]
    name = {"vrand": "V_rand (thinned)", "ap50": "AP50"}[by]
    return (
        f"post-processing tuned on {tuned['images']} validation image(s): {settings(config)} "
        f"({name} {tuned['scores'][by]:.3f}, {tuned['before'][by]:.3f} before); saved with the model"
    )


def settings(config: Any) -> str:
    """A post-processing's settings in words: "threshold 0.5, seeds cores p > 0.9, watershed on, objects >= 16 px,
    growth off", or "flood seeds above 0.7" for a flooding model.

    >>> from napari_unet.postprocess import PostprocessConfig
    >>> settings(PostprocessConfig(seed_threshold=0.9, watershed=True))
    'threshold 0.5, seeds cores p > 0.9, watershed on, objects >= 16 px, growth off'
    >>> settings(PostprocessConfig(seed_threshold=0.4, grow_threshold=0.2))
    'threshold 0.5, seeds the mask, watershed off, objects >= 16 px, growth to p > 0.2'
    """
    if config.flood:
        return f"flood seeds above {config.threshold}"
    seeds = "the mask" if config.cores_above is None else f"cores p > {config.cores_above}"
    growth = f"to p > {config.grow_threshold}" if config.grows else "off"
    watershed = "on" if config.watershed else "off"
    return (
        f"threshold {config.threshold}, seeds {seeds}, watershed {watershed}, objects >= {config.min_size} px, "
        f"growth {growth}"
    )


def summary(result: dict[str, Any], out: Path) -> str:
    score = result["val_score"]
    validation = f"validation IoU {score:.4f}" if score is not None else "no validation images"
    return (
        f"trained {result['iteration']} iteration{'s' if result['iteration'] != 1 else ''} in {duration(result['elapsed'])} on {result['device']}: "
        f"loss {result['loss']:.4f}, {validation}; model saved to {out}"
    )
