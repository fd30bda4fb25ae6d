"""From foreground probabilities to instance labels.

The network is trained on targets where touching cells are separated by thin background borders
(`targets.separate_cells(labels, border)`), so thresholding its foreground probability and taking connected
components already separates most touching cells. `probs_to_labels` then, in this order:

1. threshold: mask = probs_fg > threshold;
2. connected components of the mask (4-connectivity, so a 1-pixel diagonal border still separates);
3. optionally, a seeded watershed splits what stays merged: seeds are the h-maxima of the Euclidean distance
   transform of the mask (one seed per "bump" rising at least `watershed_h` pixels above the pass to a
   higher one), flooded on the negated distance;
   With a `seed_threshold` above the threshold, steps 2 and 3 start from the objects' cores instead: the
   components of probs_fg > seed_threshold (split by the same watershed when `watershed`; cores smaller than a
   quarter of `min_size` are dropped) spread over the negated probability until they fill the mask, so two
   touching cells part along the valley of the network's probability between their cores, where the mask's
   distance transform sees one blob. A component of the mask that holds no core is kept as steps 2-3 would
   make it without seeds (a cell the network is less sure of is not lost, two such cells touching are split by
   the watershed). On the 100 DSB 2018 fluorescence validation images this raised the built-in model's AP50
   from 0.820 to 0.843 and its mAP from 0.632 to 0.655 (docs/models.md);
4. objects smaller than `min_size` pixels are removed;
5. objects grow into the pixels of lower probability around them (hysteresis): a seeded watershed of the
   negated probability, from the objects, over the pixels with probs_fg > `grow_threshold` within
   `grow_distance` pixels of an object (so a network that is unsure everywhere cannot flood the image). The high
   `threshold` decides which cells exist and where touching ones part, the low one how far each extends.
   A network trained with strong border weights (large w0) can be cautious at the edges of cells (on the
   synthetic sample its probability falls below 0.5 a pixel or two inside the true outline); this step gives
   those pixels back without merging anything (two objects never join; a region above `grow_threshold` that holds no object
   stays background). Off by default: whether it helps depends on where the annotators drew the outlines
   (on the synthetic sample it does, on DSB 2018 nuclei it does not), so `tune_config` (CLI
   `train --tune-postprocess`) chooses it on validation images, and the Segment dock has it as a control;
6. objects grow back into the separation borders: a background pixel within `border_width` pixels of two or
   more objects goes to the nearest one (as `skimage.segmentation.expand_labels` would, but only in these
   gaps), so touching cells cover their common boundary again, while the outer outline, which the targets
   did not shrink, stays put;
   With `flood` (cells that tile the image, as in electron micrographs of tissue, where thin membranes part
   every cell from its neighbours: binary membrane masks, `targets.cells_tile_image`), steps 5 and 6 are
   replaced by a flood: the objects grow over the negated probability, through every pixel, until they meet,
   with a 1-pixel background line where two meet (`skimage.segmentation.watershed` with `watershed_line`). The
   threshold then only chooses the seeds, the cells' surest parts: a membrane that the network draws faintly
   (probability of cell interior a little below 1 across a gap) still parts two cells, because the two floods
   meet at its ridge, where thresholding would have merged them;
7. optionally, holes are filled: a background region that touches neither the image border nor any object
   other than a single one joins that object (objects stay disjoint, gaps enclosed by several cells stay);
8. ids are made consecutive 1..n.

`PostprocessConfig` holds the parameters; it is saved with the model (`to_dict` / `from_dict`) and can be
changed without running the network again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

from ._config import Config, check_flag, check_range
from .validation import check_probabilities

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


@dataclass(frozen=True)
class PostprocessConfig(Config):
    """Parameters of `probs_to_labels`.

    threshold: foreground where probs_fg > threshold, in [0, 1].
    min_size: objects with fewer pixels are removed (counted before they grow, steps 5 and 6).
    fill_holes: fill background regions enclosed by a single object.
    watershed: split merged objects with a watershed seeded by the h-maxima of the distance transform.
    watershed_h: minimal dynamic, in pixels of distance, of a distance-transform maximum to seed a region:
        two disks of radii r1 <= r2 joined by a neck of half-width w split when r1 - w >= watershed_h.
    grow_threshold: objects grow into the neighbouring pixels with probs_fg > grow_threshold (step 5); None
        turns this off, as does a value >= threshold.
    grow_distance: objects grow by at most this many pixels (Euclidean).
    border_width: width (pixels) of the background borders cut between touching cells in the training
        targets (the `border` of `targets.separate_cells`); 0 for targets that were not separated, such as
        binary ISBI masks.
    flood: the objects flood the whole image over the negated probability until they meet (1-pixel lines
        between them), instead of steps 5 and 6: for cells that tile the image (membrane masks).
    seed_threshold: objects are seeded by their cores, probs_fg > seed_threshold, and spread over the mask
        (steps 2-3); None turns this off, as does a value <= threshold.

    >>> PostprocessConfig.from_dict(PostprocessConfig(min_size=30).to_dict()).min_size
    30
    """

    threshold: float = 0.5
    min_size: int = 16
    fill_holes: bool = True
    watershed: bool = False
    watershed_h: float = 2.0
    grow_threshold: float | None = None
    grow_distance: float = 5.0
    border_width: int = 1
    flood: bool = False
    seed_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("fill_holes", "watershed", "flood"):
            check_flag(self, name)
        for name in ("min_size", "border_width"):
            check_range(self, name, 0, integer=True, meaning="pixels")
        check_range(self, "threshold", 0.0, 1.0, meaning="a probability")
        check_range(self, "grow_threshold", 0.0, 1.0, optional=True, meaning="a probability")
        check_range(self, "seed_threshold", 0.0, 1.0, optional=True, meaning="a probability")
        check_range(self, "grow_distance", 0.0, meaning="pixels")
        check_range(self, "watershed_h", 0.0, open_low=True, meaning="pixels")

    @property
    def grows(self) -> bool:
        """Whether step 5 runs: a growth threshold is set and lies below the threshold."""
        return self.grow_threshold is not None and self.grow_threshold < self.threshold

    @property
    def seeds_from_cores(self) -> bool:
        """Whether the objects are seeded by their cores: a seed threshold is set and lies above the threshold."""
        return self.seed_threshold is not None and self.seed_threshold > self.threshold

    @property
    def cores_above(self) -> float | None:
        """The seed threshold in effect: `seed_threshold` when the objects are seeded by their cores, else None."""
        return self.seed_threshold if self.seeds_from_cores else None


def probs_to_labels(probs_fg: np.ndarray, config: PostprocessConfig | None = None) -> np.ndarray:
    """Instance labels from a foreground probability map.

    probs_fg: (H, W) float, the foreground probability (softmax channel 1), finite and in [0, 1] (anything else
    raises ValueError, `validation.check_probabilities`). Returns (H, W) int32 labels, 0 = background, objects
    numbered 1..n. See the module docstring for the steps.

    >>> probs = np.zeros((5, 7)); probs[1:4, 1:3] = 0.9; probs[1:4, 4:6] = 0.9
    >>> probs_to_labels(probs, PostprocessConfig(min_size=1))
    array([[0, 0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 2, 2, 0],
           [0, 1, 1, 1, 2, 2, 0],
           [0, 1, 1, 1, 2, 2, 0],
           [0, 0, 0, 0, 0, 0, 0]], dtype=int32)
    """
    config = PostprocessConfig() if config is None else config
    probs_fg = np.asarray(probs_fg)
    if probs_fg.ndim != 2:
        raise ValueError(f"probs_fg must be a 2-D (H, W) probability map; got shape {probs_fg.shape}")
    check_probabilities(probs_fg, "probs_fg")  # float, finite, in [0, 1]: as the metrics refuse the rest
    return labels_from_seeds(object_seeds(probs_fg, config), probs_fg, config)


def labels_from_seeds(seeds: np.ndarray, probs_fg: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Steps 5 to 8 of `probs_to_labels` (the module docstring) from its `object_seeds`: (H, W) int32 labels
    numbered 1..n."""
    labels = seeds
    if config.flood:
        labels = flood_image(labels, probs_fg)
    else:
        if config.grows:
            labels = grow_by_probability(labels, probs_fg, config.grow_threshold, config.grow_distance)
        if config.border_width > 0:
            labels = grow_into_borders(labels, config.border_width)
    if config.fill_holes:
        labels = fill_object_holes(labels)
    return relabel_consecutive(labels)


def object_seeds(probs_fg: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Steps 1-4 of `probs_to_labels`: the objects before they grow or flood, (H, W) int32 labels (ids not
    consecutive). Every object `probs_to_labels` returns holds exactly one of them, whatever grew from it."""
    mask = probs_fg > config.threshold
    labels = spread_from_cores(probs_fg, mask, config) if config.seeds_from_cores else split_mask(mask, config)
    return remove_small_objects(labels, config.min_size)


def split_mask(mask: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Steps 2-3: the mask's 4-connected components, split by the distance-transform watershed when
    `config.watershed`; (H, W) int32 labels, ids not consecutive."""
    if config.watershed:
        return split_by_watershed(mask, config.watershed_h)
    return ndimage.label(mask, structure=FOUR_CONNECTED)[0]


def spread_from_cores(probs_fg: np.ndarray, mask: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """The objects of `mask` seeded by their cores (`config.seed_threshold`, module docstring, steps 2-3): (H, W)
    int32 labels covering exactly the mask, ids not consecutive.

    >>> probs = np.array([[0.6, 0.95, 0.7, 0.6, 0.9, 0.6, 0.0, 0.7]])
    >>> spread_from_cores(probs, probs > 0.5, PostprocessConfig(seed_threshold=0.8, min_size=1))
    array([[1, 1, 1, 2, 2, 2, 0, 4]], dtype=int32)
    """
    cores = remove_small_objects(split_mask(probs_fg > config.seed_threshold, config), config.min_size // 4)
    components, count = ndimage.label(mask, structure=FOUR_CONNECTED)
    seeded = np.zeros(count + 1, bool)
    seeded[components[cores > 0]] = True
    without_core = mask & ~seeded[components]
    markers = np.where(without_core, components + int(cores.max()), cores)
    if config.watershed:  # a component without a core is split as the mask would be: two dim touching cells stay two
        _split_components(markers, components, np.flatnonzero(~seeded[1:]) + 1, config.watershed_h)
    return flood_components(-probs_fg, markers.astype(np.int32), components)


def _split_components(labels: np.ndarray, components: np.ndarray, ids: np.ndarray, h: float) -> None:
    """Split the components `ids` of `components` by the distance-transform watershed, in place in `labels`
    (new ids above those in use). One bounding box at a time: the components are few and small."""
    boxes = ndimage.find_objects(components)
    next_id = int(labels.max()) + 1
    for index in ids.tolist():
        box = boxes[index - 1]
        inside = components[box] == index
        parts = split_by_watershed(inside, h)
        found = np.unique(parts[inside])
        if found.size > 1:
            labels[box][inside] = np.searchsorted(found, parts[inside]) + next_id
            next_id += found.size


def flood_image(labels: np.ndarray, probs_fg: np.ndarray) -> np.ndarray:
    """The objects of `labels` grown over the negated probability `probs_fg` until they fill the image, with a
    1-pixel background line (4-connected separation) where two meet; labels without objects stay empty.

    >>> probs = np.array([[0.9, 0.8, 0.3, 0.7, 0.9, 0.9]])
    >>> flood_image(np.array([[1, 0, 0, 0, 0, 2]]), probs)
    array([[1, 1, 0, 2, 2, 2]], dtype=int32)
    """
    from skimage.segmentation import watershed

    if not labels.any():
        return labels.astype(np.int32)
    return watershed(-probs_fg, markers=labels, connectivity=1, watershed_line=True).astype(np.int32)


GROWTH_CANDIDATES: tuple[float | None, ...] = (None, 0.3, 0.2, 0.1, 0.05)

# Core thresholds `tune_config` tries (`PostprocessConfig.seed_threshold`); those at or below the threshold
# are skipped. The built-in `nuclei` model's tuning on DSB 2018 training images chose 0.95.
SEED_CANDIDATES: tuple[float, ...] = (0.8, 0.9, 0.95)


def score_config(
    config: PostprocessConfig, probs: Sequence[np.ndarray], truths: Sequence[np.ndarray]
) -> dict[str, float]:
    """How well `config` segments: the mean over images of AP50, mAP, F1 at 0.5 and SEG
    (`metrics.instance_scores`) of `probs_to_labels(p, config)` against each truth.

    probs: foreground probabilities (H, W); truths: instance labels (H, W) of the same images.

    >>> probs = np.zeros((8, 8)); probs[2:6, 2:6] = 0.9
    >>> truth = (probs > 0.5).astype(int)
    >>> score_config(PostprocessConfig(min_size=1), [probs], [truth])["ap50"]
    1.0
    """
    from .metrics import instance_scores

    _check_pairs(probs, truths)
    scores = [instance_scores(probs_to_labels(p, config), np.asarray(t)) for p, t in zip(probs, truths)]
    return {key: float(np.mean([s[key] for s in scores])) for key in ("ap50", "map", "f1_50", "seg")}


def score_membranes(
    config: PostprocessConfig, probs: Sequence[np.ndarray], truths: Sequence[np.ndarray]
) -> dict[str, float]:
    """How well `config` segments cells that tile the image: the mean over images of the ISBI 2012 scores
    V_rand and V_info (thinned, `metrics.rand_info_scores`) of `probs_to_labels(p, config)` against each truth.

    probs: foreground probabilities (H, W); truths: binary masks (H, W) of the same images, nonzero = cell
    interior, 0 = membrane (the cells are their 4-connected components).
    """
    from .metrics import rand_info_scores

    _check_pairs(probs, truths)
    scores = [rand_info_scores(probs_to_labels(p, config), np.asarray(t), thinned=True) for p, t in zip(probs, truths)]
    return {key: float(np.mean([s[key] for s in scores])) for key in ("vrand", "vinfo")}


def best_config(
    candidates: Sequence[PostprocessConfig],
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    rank: Callable[[dict[str, float]], Any],
    score: Callable[..., dict[str, float]] = score_config,
) -> tuple[PostprocessConfig, dict[str, float], list[dict[str, float]]]:
    """The candidate whose labels score best against `truths`: (config, its mean scores, every candidate's).

    Each candidate post-processes every probability map once and is scored by `score` (`score_config`, or
    `score_membranes` for membrane masks); `rank` orders the mean scores (higher is better); a later candidate
    must rank strictly higher to win, so ties keep the earlier one.
    """
    _check_pairs(probs, truths)
    best, best_rank, best_scores, table = candidates[0], None, {}, []
    for candidate in candidates:
        mean = score(candidate, probs, truths)
        table.append(mean)
        if best_rank is None or rank(mean) > best_rank:
            best, best_rank, best_scores = candidate, rank(mean), mean
    return best, best_scores, table


def _check_pairs(probs: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> None:
    if not probs or len(probs) != len(truths):
        raise ValueError(
            f"need as many probability maps as label images (at least one); got {len(probs)} and {len(truths)}"
        )


def tune_config(
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    base: PostprocessConfig | None = None,
    thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    watershed: Sequence[bool] = (False, True),
    grow_thresholds: Sequence[float | None] | None = None,
    watershed_h: Sequence[float] = (1.0, 2.0, 3.0),
    seed_thresholds: Sequence[float] = SEED_CANDIDATES,
    min_sizes: Sequence[int] = (),
) -> tuple[PostprocessConfig, dict[str, float]]:
    """The post-processing that segments validation images best: (config, its mean scores).

    probs: foreground probabilities (H, W) of the validation images; truths: their instance labels (H, W).
    Three rounds: first `base` (default `PostprocessConfig()`) as it is and with each threshold and watershed
    setting (with the watershed: each depth in `watershed_h`), objects seeded by the mask; then the winner
    seeded by its cores (each of `seed_thresholds` above its threshold, with each watershed setting again: the
    cores part differently from the mask); then, if `min_sizes` are given, the winner with each smallest object
    size (px, at the images' scale: small fragments are false objects or parts of a nucleus); then
    the winner with each growth threshold (`grow_thresholds`, default `GROWTH_CANDIDATES`; None: no growth).
    The rounds are scored by the mean AP over IoU 0.5:0.95 (mAP: which objects exist, and where their outlines
    lie), ties broken by the mean AP at IoU 0.5, then by the order of the candidates (the previous winner first).
    Fitted on training images, AP50 favours high thresholds, where the network is surer there than on new
    images: ranked by AP50, a growth that raised AP50 on 8 DSB training images cost 0.075 mAP on the validation
    images (benchmarks/results/real_dsb_1200s_growth_by_ap50.json). The network is not run again: only
    `probs_to_labels` is, once per candidate (`best_config`).
    """
    base = PostprocessConfig() if base is None else base
    grow_thresholds = GROWTH_CANDIDATES if grow_thresholds is None else grow_thresholds

    def rank(mean: dict[str, float]) -> tuple[float, float]:
        return mean["map"], mean["ap50"]

    splits = [(bool(w), h) for w in watershed for h in (watershed_h if w else (base.watershed_h,))]
    first = [base] + [
        replace(base, threshold=float(t), watershed=w, watershed_h=float(h), seed_threshold=None)
        for w, h in splits
        for t in thresholds
    ]
    best = best_config(first, probs, truths, rank)[0]
    seeded = [
        replace(best, seed_threshold=float(s), watershed=w, watershed_h=float(h))
        for s in seed_thresholds
        if s > best.threshold
        for w, h in splits
    ]
    best = best_config([best, *seeded], probs, truths, rank)[0]
    if min_sizes:
        sized = [replace(best, min_size=int(size)) for size in min_sizes if int(size) != best.min_size]
        best = best_config([best, *sized], probs, truths, rank)[0]
    last = [best] + [replace(best, grow_threshold=None if g is None else float(g)) for g in grow_thresholds]
    best, scores, _ = best_config(last, probs, truths, rank)
    return best, scores


def tuning_record(
    images: str,
    by: str,
    before: dict[str, float],
    before_config: PostprocessConfig,
    scores: dict[str, float],
    chosen: PostprocessConfig,
) -> dict[str, Any]:
    """What a model's metadata keeps of a post-processing tuning (`postprocess_tuning`): on which images, ranked
    by which scores, the mean scores with the settings it had (`before`, `before_config`) and with the ones
    chosen (`scores`, `chosen`). `napari-unet train --tune-postprocess` and `scripts/train_generalist.py` write it.

    >>> record = tuning_record("2 validation image(s)", "map, ap50", {"map": 0.5}, PostprocessConfig(),
    ...                        {"map": 0.6}, PostprocessConfig(threshold=0.7))
    >>> list(record), record["chosen"]["threshold"]
    (['images', 'by', 'before', 'before_config', 'scores', 'chosen'], 0.7)
    """
    return {
        "images": images,
        "by": by,
        "before": before,
        "before_config": before_config.to_dict(),
        "scores": scores,
        "chosen": chosen.to_dict(),
    }


def calibrate_growth(
    probs: Sequence[np.ndarray],
    cells: Sequence[np.ndarray],
    base: PostprocessConfig | None = None,
    candidates: Sequence[float | None] = GROWTH_CANDIDATES,
) -> tuple[PostprocessConfig, dict[str, float]]:
    """The growth (step 5) under which the objects found match annotated cells best: (config, mean SEG per
    candidate, keyed "off" or the threshold as text).

    probs: foreground probabilities (H, W); cells: the annotated cells of the same images (H, W) instance ids,
    0 elsewhere (unannotated cells included). The score is the Cell Tracking Challenge's SEG, which looks only at
    the annotated cells (each scored by the Jaccard index of the object covering more than half of it, 0 if
    none), so a few annotated cells in a large image are enough. Growth neither merges nor adds objects, it moves
    outlines, and SEG falls when they overshoot as when they stop short. Candidates are tried in order (no
    growth first); a later one must score higher to be chosen. The other parameters stay those of `base`.
    """
    base = PostprocessConfig() if base is None else base
    configs = [replace(base, grow_threshold=grow) for grow in candidates]
    best, _, table = best_config(configs, probs, cells, rank=lambda mean: mean["seg"])
    return best, {"off" if grow is None else str(grow): mean["seg"] for grow, mean in zip(candidates, table)}


# Seed thresholds `fit_flood_seeds` tries. On ISBI 2012 the best one moves between 0.6 and 0.97 from network to
# network and from slice to slice (docs/results.md).
FLOOD_SEED_CANDIDATES: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95)
# How far below the best mean V_rand on the fitting images a higher seed threshold may score and still be chosen
# (`fit_flood_seeds`): on its own training images a network is surer of every membrane than on new ones, so the
# fit there leans towards seeds that leak through the membranes it draws faintly elsewhere (docs/results.md).
FLOOD_SEED_TOLERANCE = 0.005


def fit_flood_seeds(
    probs: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    base: PostprocessConfig,
    candidates: Sequence[float] = FLOOD_SEED_CANDIDATES,
    tolerance: float = FLOOD_SEED_TOLERANCE,
) -> tuple[PostprocessConfig, dict[str, float]]:
    """The seed threshold of a flood (`PostprocessConfig.flood`) for membrane masks: the highest whose labels
    score within `tolerance` of the best (config, mean thinned V_rand per candidate, keyed by the threshold as text).

    probs: foreground probabilities (H, W); masks: binary masks of the same images (nonzero = cell interior,
    0 = membrane). Ranked by the mean thinned V_rand (`score_membranes`), ISBI 2012's ranking score: the highest
    threshold among those within `tolerance` of the best score is chosen (`base`'s own threshold and the
    candidates alike). The images are usually the network's training images, where it is surer of the membranes
    than on new ones: of thresholds that score alike there, the highest seeds the cells from their surest pixels
    and leaks least through a membrane drawn faintly. A candidate that leaves an image without any seed is never
    chosen (an image without segments counts as one cell covering it, which can outscore a network's first,
    over-split guesses), unless every one does. The other parameters stay those of `base`, whose flood is
    turned on.

    A membrane drawn faintly (0.6) between two cells: seeds above 0.5 merge the cells, seeds above 0.9 flood
    from each cell's surest pixel and meet on the membrane.

    >>> probs = np.full((9, 9), 0.8); probs[:, 4] = 0.6; probs[4, 1] = probs[4, 7] = 0.97
    >>> mask = np.ones((9, 9), np.uint8); mask[:, 4] = 0
    >>> config, scores = fit_flood_seeds([probs], [mask], PostprocessConfig(min_size=1), candidates=(0.5, 0.9))
    >>> config.threshold, config.flood, scores["0.5"] < scores["0.9"] == 1.0
    (0.9, True, True)
    """
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"the tolerance is a difference of V_rand scores in [0, 1), got {tolerance}")
    base = replace(base, flood=True)
    thresholds = [base.threshold] + [float(t) for t in candidates if float(t) != base.threshold]
    configs = [replace(base, threshold=t) for t in thresholds]

    def seeds_everywhere(config: PostprocessConfig) -> bool:
        return all(object_seeds(np.asarray(p), config).any() for p in probs)

    usable = [config for config in configs if seeds_everywhere(config)] or configs[:1]
    _, best, table = best_config(usable, probs, masks, rank=lambda mean: mean["vrand"], score=score_membranes)
    near = [config for config, mean in zip(usable, table) if mean["vrand"] >= best["vrand"] - tolerance]
    chosen = max(near, key=lambda config: config.threshold)
    return chosen, {str(config.threshold): mean["vrand"] for config, mean in zip(usable, table)}


def split_by_watershed(mask: np.ndarray, h: float) -> np.ndarray:
    """Objects of a mask, merged ones split: watershed of the negated distance transform, one region per
    h-dome.

    mask: (H, W) bool. Returns (H, W) int32 labels covering exactly the mask (ids not consecutive), each
    region within one 4-connected component; a component with a single h-dome stays whole.

    Equivalent to a watershed seeded by the h-maxima of the distance d (the maxima whose dynamic, the
    drop to the highest pass towards a higher maximum, is >= h), computed fast: flood from every local
    maximum of d, then merge adjacent basins from the highest pass down (Kruskal order) whenever the
    lower of the two summits is less than h above the pass. Maxima of equal height on one dome form one
    region (unlike `skimage.morphology.h_maxima`, which keeps each of them). Each component is split by
    itself alone (`flood_components`), so a window of the image that holds it whole splits it alike.
    """
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = ndimage.distance_transform_edt(mask)
    summits = mask & (distance == ndimage.maximum_filter(distance, footprint=EIGHT_CONNECTED))
    seeds, n_seeds = ndimage.label(summits, structure=FOUR_CONNECTED)
    basins = flood_components(-distance, seeds, ndimage.label(mask, structure=FOUR_CONNECTED)[0])
    summit_height = np.zeros(n_seeds + 1)
    summit_height[seeds[summits]] = distance[summits]
    low, high, pass_height = _basin_passes(basins, distance, n_seeds)
    root = _merge_shallow_basins(low, high, pass_height, summit_height, h)
    return root[basins]


def flood_components(image: np.ndarray, markers: np.ndarray, components: np.ndarray) -> np.ndarray:
    """The seeded watershed of `image` from `markers` within the mask `components > 0`, as
    `skimage.segmentation.watershed(image, markers, mask=components > 0, connectivity=1)` makes it, but one
    component at a time, so that the labels of a component depend on it alone.

    image: (H, W) float, flooded from its low values; markers: (H, W) int, 0 = none (those outside the
    components are ignored); components: (H, W) int, the 4-connected components of the mask (`ndimage.label`
    with `FOUR_CONNECTED`). Returns (H, W) labels of `markers`' dtype: a component holding one marker id is that
    id entirely, one holding none stays 0, one holding several is flooded on its own bounding box. skimage
    queues all marker pixels at the same priority, so which marker claims a pixel that the flood reaches from
    two at one value depends on every marker in the image: flooded together, a component could part along such
    a tie differently in two windows that both hold it whole (labels by blocks, `distributed.label_window`).

    >>> image = np.array([[0.0, 0.1, 0.5, 0.3, 0.0, 0.0, 0.0, 0.0]])
    >>> markers = np.array([[1, 0, 0, 0, 2, 0, 0, 3]])
    >>> flood_components(image, markers, np.array([[1, 1, 1, 1, 1, 0, 2, 2]]))
    array([[1, 1, 1, 2, 2, 0, 3, 3]])
    """
    from skimage.segmentation import watershed

    marked = (markers > 0) & (components > 0)
    if not marked.any():
        return np.zeros(markers.shape, markers.dtype)
    top = int(markers.max()) + 1
    pairs = np.unique(components[marked].astype(np.int64) * top + markers[marked])  # (component, marker id)
    owners = pairs // top
    count = int(components.max())
    per_component = np.bincount(owners, minlength=count + 1)
    alone = np.zeros(count + 1, markers.dtype)
    single = per_component[owners] == 1
    alone[owners[single]] = pairs[single] % top
    flooded = alone[components]
    boxes = ndimage.find_objects(components)
    for index in np.flatnonzero(per_component[1:] > 1) + 1:
        box = boxes[index - 1]
        inside = components[box] == index
        parts = watershed(image[box], markers=np.where(inside, markers[box], 0), mask=inside, connectivity=1)
        flooded[box][inside] = parts[inside]
    return flooded


def _basin_passes(basins: np.ndarray, distance: np.ndarray, n_basins: int) -> tuple[np.ndarray, ...]:
    """Adjacent basin pairs (low id, high id) and the height of the highest pass between them.

    Crossing between 4-adjacent pixels p, q of different basins costs min(d(p), d(q)); the pass is the
    highest crossing. Returns three (K,) arrays.
    """
    lows, highs, heights = [], [], []
    for a, b, da, db in (
        (basins[:, :-1], basins[:, 1:], distance[:, :-1], distance[:, 1:]),
        (basins[:-1], basins[1:], distance[:-1], distance[1:]),
    ):
        crossing = (a != b) & (a > 0) & (b > 0)
        a, b = a[crossing].astype(np.int64), b[crossing].astype(np.int64)
        lows.append(np.minimum(a, b))
        highs.append(np.maximum(a, b))
        heights.append(np.minimum(da[crossing], db[crossing]))
    key = np.concatenate(lows) * (n_basins + 1) + np.concatenate(highs)
    height = np.concatenate(heights)
    order = np.lexsort((height, key))
    key, height = key[order], height[order]
    highest = np.append(key[1:] != key[:-1], True)[: key.size]
    key, height = key[highest], height[highest]
    return key // (n_basins + 1), key % (n_basins + 1), height


def _merge_shallow_basins(
    low: np.ndarray, high: np.ndarray, pass_height: np.ndarray, summit_height: np.ndarray, h: float
) -> np.ndarray:
    """Union-find over basins, passes taken from the highest down: two groups merge when the lower of
    their summits is less than h above the pass. Returns the (n + 1,) lookup basin -> group id (0 -> 0)."""
    parent = list(range(summit_height.size))
    top = summit_height.tolist()

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    order = np.argsort(-pass_height, kind="stable")
    for a, b, height in zip(low[order].tolist(), high[order].tolist(), pass_height[order].tolist()):
        a, b = find(a), find(b)
        if a == b:
            continue
        if top[a] < top[b]:
            a, b = b, a
        if top[b] - height < h:
            parent[b] = a
    return np.array([find(x) for x in range(len(parent))], dtype=np.int32)


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """`labels` with the objects of fewer than `min_size` pixels set to 0 (background)."""
    if min_size <= 1:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def grow_by_probability(
    labels: np.ndarray, probs_fg: np.ndarray, threshold: float, distance: float = np.inf
) -> np.ndarray:
    """`labels` grown over the pixels with probs_fg > threshold, within `distance` pixels (Euclidean) of an
    object, that connect to them (4-connectivity).

    A seeded watershed of -probs_fg: each such pixel joins the object it is reached from along the highest
    probabilities, so two objects meet where the probability between them is lowest. Object pixels keep
    their ids; objects stay disjoint and never merge; pixels not connected to any object stay 0. Each
    4-connected region of such pixels grows by itself alone (`flood_components`).
    """
    if not labels.any() or distance <= 0:
        return labels
    reachable = probs_fg > threshold
    if np.isfinite(distance):
        reachable &= ndimage.distance_transform_edt(labels == 0) <= distance
    reachable |= labels > 0
    return flood_components(-probs_fg, labels, ndimage.label(reachable, structure=FOUR_CONNECTED)[0])


def grow_into_borders(labels: np.ndarray, border_width: int) -> np.ndarray:
    """Give each background pixel within `border_width` (Euclidean) of two or more objects to the nearest.

    These are the separation borders cut between touching cells in the training targets; pixels near a
    single object (its outer outline) stay background. Objects stay disjoint. Equidistant objects are
    resolved in a fixed order of directions (up, left, right, down first).
    """
    if border_width <= 0 or not labels.any():
        return labels
    radius = int(border_width)
    offsets = [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if 0 < dy * dy + dx * dx <= border_width**2
    ]
    offsets.sort(key=lambda offset: offset[0] ** 2 + offset[1] ** 2)
    disk = np.zeros((2 * radius + 1, 2 * radius + 1), bool)
    disk[radius, radius] = True
    for dy, dx in offsets:
        disk[radius + dy, radius + dx] = True
    above = np.iinfo(labels.dtype).max
    highest = ndimage.maximum_filter(labels, footprint=disk, mode="constant", cval=0)
    lowest = ndimage.minimum_filter(np.where(labels == 0, above, labels), footprint=disk, mode="constant", cval=above)
    pending = (labels == 0) & (highest != 0) & (lowest != highest)
    grown = labels.copy()
    padded = np.pad(labels, radius)
    height, width = labels.shape
    for dy, dx in offsets:
        if not pending.any():
            break
        neighbour = padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
        take = pending & (neighbour != 0)
        grown[take] = neighbour[take]
        pending &= ~take
    return grown


def fill_object_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of each object: background regions (8-connected, since objects are 4-connected) that
    do not touch the image border and whose neighbouring object pixels all belong to one object.

    Vectorised: for each background region, the largest and the smallest object id among the 8-neighbours
    of its pixels; they are equal exactly when a single object surrounds it.
    """
    background = labels == 0
    regions, n_regions = ndimage.label(background, structure=EIGHT_CONNECTED)
    if n_regions == 0 or n_regions == 1 and background.all():
        return labels
    top = int(labels.max()) + 1
    highest_near = ndimage.maximum_filter(labels, footprint=EIGHT_CONNECTED, mode="constant", cval=0)
    flipped = np.where(background, 0, top - labels)
    lowest_near = top - ndimage.maximum_filter(flipped, footprint=EIGHT_CONNECTED, mode="constant", cval=0)
    shore = background & (highest_near > 0)
    region_highest = np.zeros(n_regions + 1, np.int64)
    region_lowest = np.full(n_regions + 1, top, np.int64)
    np.maximum.at(region_highest, regions[shore], highest_near[shore])
    np.minimum.at(region_lowest, regions[shore], lowest_near[shore])
    enclosed = (region_highest == region_lowest) & (region_highest > 0)
    enclosed[np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])] = False
    enclosed[0] = False
    fill = np.where(enclosed, region_highest, 0).astype(labels.dtype)
    return np.where(background, fill[regions], labels)


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n in increasing order of the original ids (0 stays 0), as int32."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lookup[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lookup[labels]
