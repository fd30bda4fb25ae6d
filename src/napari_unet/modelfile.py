"""A trained model is a folder: `config.json` (architecture, normalisation, post-processing, training metadata)
and `weights.safetensors` (tensors only: loading runs no code).

>>> import tempfile
>>> from napari_unet.model import UNet
>>> folder = save_model(tempfile.mkdtemp() + "/cells", ModelBundle(UNet(depth=2, base_channels=4)))
>>> load_model(folder).net.config.depth
2

A model may know the size of the objects it was trained on (`object_diameter`, px, like Cellpose's diameter):
`predict` and `segment` then rescale each image by model diameter / object diameter before the network and
return results at the image's size; the object diameter is given, or estimated ("auto", the default; the
rules and the estimation are `scale.diameter_factor` and `scale.estimate_diameter`). Models without one (None:
every model trained before this existed) never rescale. `load_model` also accepts the name of a built-in model
(`napari_unet.builtin`), e.g. `load_model("nuclei")`.
"""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._config import Config, check_range
from .channels import ChannelChoice
from .device import select_device
from .io import (
    apply_normalization,
    carry_over,
    channel_values,
    default_mode,
    guess_axes,
    percentiles_of,
    recover_replaced_folder,
    remove_stale_temporaries,
    replace_folder,
    temporary_sibling,
    to_canonical,
    validate_axes,
)
from .model import UNet, UNetConfig
from .modelfolder import CONFIG_FILE, FORMAT, WEIGHTS_FILE, is_model_folder
from .postprocess import PostprocessConfig, probs_to_labels
from .scale import (
    Diameter,
    check_diameter,
    check_rescalable,
    check_tta_size,
    diameter_factor,
    estimate_diameter,
    rescale_image,
    resize_probs,
    scale_postprocess,
)
from .tiling import as_array, as_channels_first, as_dask, check_not_empty, predict_tiled, predict_tta
from .validation import check_finite, check_image, check_image_dtype, check_json_object, check_unet_entry

FORMAT_VERSION = 1
STATE_FILE = "training_state.pt"
POLARITY_BINS = 32  # the histogram `Normalization.flips` finds a channel's most common value in


def polarity_statistics(normalised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median, most common value) of each channel's normalised values (C, N), what `Normalization.flips` decides
    the polarity by: the most common value is the centre of the fullest of `POLARITY_BINS` bins over [0, 1]."""
    values = np.asarray(normalised, dtype=np.float32)
    counts = [np.histogram(np.clip(v, 0.0, 1.0), bins=POLARITY_BINS, range=(0.0, 1.0))[0] for v in values]
    return np.median(values, axis=1), (np.argmax(counts, axis=1) + 0.5) / POLARITY_BINS


@dataclass(frozen=True)
class Normalization(Config):
    """Percentile normalisation applied to every input: (x - p_low) / (p_high - p_low), per channel.

    invert: False, True or "auto": channels are inverted (1 - x, i.e. (x - p_high) / (p_low - p_high)); "auto"
    inverts a channel with a bright background (brightfield, stained histology), so that a model trained on
    fluorescence sees bright objects: one whose normalised median or most common value (its background, also
    where the objects cover most of the image) lies above 0.5. `benchmarks/bench_polarity.py` measures the rule
    on the data sets: no DSB 2018 fluorescence image is inverted (medians <= 0.19, most common values <= 0.15),
    2 of the 150 BBBC039 images are (medians 0.55 and 0.57, by either statistic), and 122 of the 123 DSB 2018
    brightfield/histology images are (by the median alone, 121: one with dense dark nuclei was not inverted).

    >>> values = np.array([[0.9, 0.95, 0.95, 0.2], [0.1, 0.05, 0.05, 0.8], [0.95, 0.95, 0.3, 0.2]])
    >>> Normalization(invert="auto").flips(values)  # bright median; dark; a dark median but bright background
    array([ True, False,  True])
    """

    low: float = 1.0
    high: float = 99.8
    invert: bool | str = False

    def __post_init__(self) -> None:
        check_range(self, "low", 0.0, 100.0, meaning="a percentile")
        check_range(self, "high", 0.0, 100.0, meaning="a percentile")
        if not self.low < self.high:
            raise ValueError(f"normalisation percentiles need 0 <= low < high <= 100, got {self.low}, {self.high}")
        if self.invert not in (False, True, "auto"):
            raise ValueError(f'normalisation invert must be false, true or "auto", got {self.invert!r}')

    def flips(self, normalised: np.ndarray) -> np.ndarray:
        """Which channels to invert, given a sample of each channel's normalised values (C, N): (C,) bool."""
        values = np.asarray(normalised, dtype=np.float32)
        if self.invert != "auto":
            return np.full(values.shape[0], bool(self.invert))
        median, mode = polarity_statistics(values)
        return (median > 0.5) | (mode > 0.5)

    def bounds(self, image, axes: str = "CYX", values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) that normalise `image` as a model sees it, `(x - lo) / (hi - lo)`: the percentiles of the whole
        image (a bounded sample, `io.channel_values`), swapped for the channels `flips` inverts (decided on that
        sample: (x - hi) / (lo - hi) = 1 - (x - lo) / (hi - lo)). Shaped to broadcast against `axes`. Inference
        (`ModelBundle.preprocessor`) and fine-tuning (which trains on crops) both decide the polarity here, on
        the whole image. values: that sample when the caller has read it already (a lazy image's is read from
        disk)."""
        if values is None:
            values = channel_values(image, axes)  # one bounded sample, for the percentiles and the polarity
        lo, hi = percentiles_of(values, self.low, self.high, axes)
        if self.invert is not False:
            normalised = apply_normalization(values, lo.reshape(-1, 1), hi.reshape(-1, 1))  # (C, N), as the windows
            flip = self.flips(normalised).reshape(lo.shape)
            lo, hi = np.where(flip, hi, lo), np.where(flip, lo, hi)
        return lo, hi

    def apply_polarity(self, normalised: np.ndarray) -> np.ndarray:
        """A normalised (C, H, W) image with the channels `flips` chooses inverted (1 - x)."""
        normalised = np.asarray(normalised, dtype=np.float32)
        if self.invert is False:
            return normalised
        flip = self.flips(normalised[:, ::4, ::4].reshape(normalised.shape[0], -1))
        if not flip.any():
            return normalised
        out = normalised.copy()
        out[flip] = 1.0 - out[flip]
        return out


@dataclass
class ModelBundle:
    """A network with everything needed to use it: normalisation, post-processing, the diameter (px) of the
    objects it was trained on (None: unknown, images are never rescaled) and where it came from.

    channels: how an image's channels become the network's `in_channels` (saved as config.json's "input").
    """

    net: UNet
    normalization: Normalization = field(default_factory=Normalization)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    metadata: dict[str, Any] = field(default_factory=dict)
    channels: ChannelChoice = field(default_factory=ChannelChoice)
    object_diameter: float | None = None

    def __post_init__(self) -> None:
        self.object_diameter = check_diameter(self.object_diameter)  # a float (numpy numbers accepted) or None

    def prepare(self, image, axes: str, name: str = "the image", choice: ChannelChoice | None = None):
        """``(image, axes)`` as the network takes them: the channel choice (``choice``, default the model's)
        applied, and the channel count checked against the network's, with an error that says what to do."""
        choice = self.channels if choice is None else choice
        image, axes = choice.apply(image, axes)
        found = image.shape[axes.index("C")] if "C" in axes else 1
        expected = self.net.config.in_channels
        if found != expected:
            raise ValueError(
                f"the model expects {expected} channel(s) ({self.describe_input()}); {name} gives {found} with "
                f"{choice.describe()} (axes {axes!r}, shape {tuple(image.shape)}): {_channel_fix(expected, found)}"
            )
        return image, axes

    def one_plane(self, image, axes: str | None = None):
        """A raw plane with `axes` (default: "YX" for 2-D, `io.guess_axes` for 3-D: an (H, W, 4) array is RGBA,
        its alpha dropped as the file readers drop it) as the network takes it, (H, W) or (C, H, W), with the
        model's channel choice applied (`prepare`). Lists and torch tensors are converted (`tiling.as_array`);
        lazy arrays stay lazy (zarr, which cannot be transposed or cast, through dask: `tiling.as_dask`)."""
        image = as_array(image)
        if axes is None and np.ndim(image) == 2:
            return image
        if not (hasattr(image, "transpose") and hasattr(image, "astype")):  # zarr: the channel choice needs both
            image = as_dask(image)
        found = guess_axes(tuple(np.shape(image))) if axes is None else validate_axes(axes, np.ndim(image))
        if axes is None and found == "YXC" and np.shape(image)[-1] == 4:  # RGBA (imageio's, skimage's PNGs):
            image = image[..., :3]  # alpha dropped, as the readers drop it, so grey is the luminance of RGB
        image, found = to_canonical(image, found)
        if not set(found) <= set("CYX"):  # (Y and X are always there: validate_axes, guess_axes)
            raise ValueError(
                f"segment takes one plane, (H, W) or with channels; got shape {tuple(np.shape(image))} read as "
                f"{found!r}: segment a stack plane by plane (or give axes=, e.g. 'YXC' for RGB)"
            )
        if "C" not in found:
            return image  # one grey plane, as without axes
        image, found = self.prepare(image, found)
        return image

    def describe_input(self) -> str:
        """What the model expects, in words: "1 channel: grey (luminance/mean of all channels)"."""
        n = self.net.config.in_channels
        return f"{n} channel{'s' if n > 1 else ''}: {self.channels.describe()} of the image"

    def preprocessor(self, image, axes: str = "CYX", values: np.ndarray | None = None):
        """The per-window normalisation with percentiles of the whole `image` (read from a bounded sample, or given
        as `values`: `io.channel_values(image, axes)`)."""
        lo, hi = self.normalization.bounds(image, axes, values)
        lo, hi = lo.reshape(-1, 1, 1), hi.reshape(-1, 1, 1)
        return lambda window: apply_normalization(window, lo, hi)

    def resolve_diameter(
        self, image, diameter: Diameter = "auto", *, device: str | torch.device = "auto"
    ) -> float | None:
        """The objects' diameter (px) in `image` that it is scaled by: `diameter` as given, estimated for "auto"
        (`estimate_diameter`; None when nothing is found), None for None and for "auto" with a model without an
        object diameter (the image is not rescaled)."""
        if diameter is None:
            return None
        if isinstance(diameter, str):
            if diameter != "auto":
                raise ValueError(f"diameter must be a number of pixels, 'auto' or None, got {diameter!r}")
            return None if self.object_diameter is None else self.estimate_diameter(image, device=device)
        return diameter

    def scale_factor(self, image, diameter: Diameter = "auto", *, device: str | torch.device = "auto") -> float:
        """The factor an image is resized by before the network: model diameter / object diameter.

        diameter: the objects' diameter in `image` (px); "auto": estimated (`estimate_diameter`; 1.0 when
        nothing is found); None: 1.0. A model without an object diameter always gives 1.0 for None and "auto",
        and refuses a number (it cannot know what to scale to).
        """
        used = self.resolve_diameter(image, diameter, device=device)
        return 1.0 if used is None else diameter_factor(self.object_diameter, used)

    def estimate_diameter(self, image, *, device: str | torch.device = "auto") -> float | None:
        """The median diameter (px) of the objects in `image` (H, W) or (C, H, W), or None when none is found:
        `scale.estimate_diameter` with windows segmented by this model (normalised with the whole image's
        percentiles). Costs 5 passes over a 256² window, whatever the image's size; reads only windows, after one
        pass (block by block) that checks the image's channels and refuses NaN or infinite values (`check_plane`):
        errors name the image given, not a window of it."""
        if self.object_diameter is None:
            raise ValueError("this model has no object diameter, so there is nothing to estimate the image's against")
        image = as_array(image)
        self.check_plane(image)
        preprocess = self.preprocessor(image, "YX" if image.ndim == 2 else "CYX")

        def segment(window: np.ndarray) -> np.ndarray:
            probs = predict_tiled(self.net, window, device=device, preprocess=preprocess)[1]
            return probs_to_labels(probs, self.postprocess)

        return estimate_diameter(image, self.object_diameter, segment)

    def check_plane(self, image) -> None:
        """Raise ValueError unless `image` is a plane the network takes, (H, W) or (C, H, W) with its channel count
        (`tiling.as_channels_first`), of real numbers without NaN or infinity (`validation.check_finite`, which
        reads a lazy array block by block). Errors give `image`'s shape and NaN count."""
        check_finite(as_channels_first(image, self.net.config.in_channels))

    def predict(
        self,
        image,
        *,
        diameter: Diameter = "auto",
        tile_size: int | None = None,
        device: str | torch.device = "auto",
        out=None,
        batch_size: int = 1,
        tta: bool = False,
    ) -> np.ndarray:
        """Probabilities (classes, H, W) of a raw (H, W) or (C, H, W) image (the network's channels: apply the
        model's channel choice first with `prepare`), normalised tile by tile.

        diameter: see `scale_factor`; the network sees the image resized by model / object diameter, and the
        probabilities are resized back to (H, W).
        tta: test-time augmentation, the mean over the 8 flips and 90-degree rotations (`tiling.predict_tta`).
        An empty image (an axis of length 0) raises ValueError. Lists and torch tensors are converted
        (`tiling.as_array`); lazy arrays stay lazy.
        """
        image = as_array(image)
        check_not_empty(image)
        factor = self.scale_factor(image, diameter, device=device)
        return self.predict_rescaled(
            image, factor, tile_size=tile_size, device=device, out=out, batch_size=batch_size, tta=tta
        )

    def predict_rescaled(
        self,
        image,
        factor: float,
        *,
        tile_size: int | None = None,
        device: str | torch.device = "auto",
        out=None,
        batch_size: int = 1,
        tta: bool = False,
    ) -> np.ndarray:
        """`predict` with the image resized by `factor` before the network (probabilities back at (H, W)).

        At 1.0 the image is read window by window (lazy arrays stay lazy); otherwise the plane is read and
        rescaled in memory, and planes of more than `scale.MAX_RESCALE_BYTES` (before or after) are refused; so
        are planes whose test-time augmentation (`tta`, in memory) would hold more (`scale.check_tta_size`).
        """
        image = as_array(image)
        small, preprocess = self.network_input(image, factor, tta=tta)
        if factor == 1.0 and not tta:
            return predict_tiled(
                self.net, small, tile_size, device=device, out=out, batch_size=batch_size, preprocess=preprocess
            )
        run = predict_tta if tta else predict_tiled
        probs = run(self.net, small, tile_size, device=device, batch_size=batch_size, preprocess=preprocess)
        probs = probs if factor == 1.0 else resize_probs(probs, tuple(image.shape[-2:]))
        if out is None:
            return probs
        out[...] = probs
        return out

    def network_input(
        self, image, factor: float = 1.0, *, tta: bool = False, check: bool = False, values: np.ndarray | None = None
    ) -> tuple[Any, Any]:
        """What the network is given for a raw (H, W) or (C, H, W) plane resized by `factor`: (the plane at the
        network's scale, its per-window normalisation with the percentiles of the plane as given).

        At 1.0 without `tta` the plane comes back as it is (lazy arrays stay lazy, read window by window);
        otherwise it is read and rescaled in memory, after the checks that this fits: planes of more than
        `scale.MAX_RESCALE_BYTES` before or after rescaling are refused (`scale.check_rescalable`), and with
        `tta` planes whose augmented copies would hold more (`scale.check_tta_size`); both look at the shape
        only, so a lazy plane is refused before it is read.
        check: refuse a plane in memory (read here or given) that holds NaN or is constant
        (`validation.check_image`), before its percentiles are taken.
        values: the plane's bounded sample (`io.channel_values`) when the caller has read it already.
        """
        image = as_array(image)
        axes = "YX" if image.ndim == 2 else "CYX"
        if factor != 1.0:
            check_rescalable(image, factor)
        if tta:
            check_tta_size(image, factor, self.net.config.num_classes)
        if factor != 1.0 or tta:
            image = np.asarray(image)
        check_image_dtype(image.dtype)  # free for any array: complex numbers are named, not a numpy TypeError
        if check and isinstance(image, np.ndarray) and not isinstance(image, np.memmap):
            check_image(image, axes)
        preprocess = self.preprocessor(image, axes, values)
        return (image if factor == 1.0 else rescale_image(image, factor)), preprocess

    def segment(
        self,
        image,
        *,
        axes: str | None = None,
        diameter: Diameter = "auto",
        postprocess: PostprocessConfig | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Instance labels (H, W) int32 of one raw plane: `predict`, then the post-processing (default: the saved
        one), its sizes scaled to the image when it was rescaled (`scale.scale_postprocess`).

        axes: of `image` over "CYX" (e.g. "YXC" for an RGB array from scikit-image or imageio); default "YX" for
        a 2-D array and `io.guess_axes` for a 3-D one (channels first when there are at most 4, RGB(A) last).
        The model's channel choice is applied (`prepare`: grey for `nuclei`, so an RGB image is seen as its
        luminance); a stack (Z or T) is refused: segment it plane by plane (`pipeline.segment_file`). An empty
        image (an axis of length 0) raises ValueError. Lists and torch tensors are converted (`tiling.as_array`);
        lazy arrays (dask, zarr, memory-mapped) stay lazy.
        """
        image = as_array(image)
        check_not_empty(image)
        image = self.one_plane(image, axes)
        factor = self.scale_factor(image, diameter, device=kwargs.get("device", "auto"))
        return self.labels_of(self.predict_rescaled(image, factor, **kwargs)[1], factor, postprocess)

    def labels_of(
        self, probs_fg: np.ndarray, factor: float = 1.0, postprocess: PostprocessConfig | None = None
    ) -> np.ndarray:
        """Instance labels of foreground probabilities (H, W) at the image's size, predicted with the image
        rescaled by `factor`: the post-processing's sizes are divided by `factor`."""
        postprocess = self.postprocess if postprocess is None else postprocess
        return probs_to_labels(probs_fg, scale_postprocess(postprocess, 1.0 / factor))


def save_model(path: str | Path, bundle: ModelBundle, training_state: dict[str, Any] | None = None) -> Path:
    """Write `bundle` to the folder `path` atomically: a crash mid-write never leaves a half-written model.

    The files are written to a temporary sibling folder, which then replaces `path` by renames; a `path` that is
    a file is refused (ValueError), not replaced.
    training_state: tensors and plain values to resume training (`training_state.pt`, read weights-only).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():  # replaced by a folder, the file would be lost
        raise ValueError(f"{path} is a file: a model is saved as a folder; choose a folder name")
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "unet": bundle.net.config.to_dict(),
        "input": {"in_channels": bundle.net.config.in_channels, **bundle.channels.to_dict()},
        "normalization": bundle.normalization.to_dict(),
        "postprocess": bundle.postprocess.to_dict(),
        "metadata": {**_versions(), **bundle.metadata},
    }
    if bundle.object_diameter is not None:
        config["object_diameter"] = float(bundle.object_diameter)
    recover_interrupted_save(path)
    remove_stale_temporaries(path)
    staging = temporary_sibling(path, folder=True)  # readable by others as the umask says, like any new folder
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in bundle.net.state_dict().items()}
        try:
            save_file(state, staging / WEIGHTS_FILE, metadata={"format": FORMAT})
            if training_state is not None:
                torch.save(training_state, staging / STATE_FILE)
        except (RuntimeError, SafetensorError) as error:  # a full disk, a file size limit: not OSErrors there
            raise OSError(f"could not write the model to {path} ({error}); the previous one is kept") from error
        (staging / WEIGHTS_FILE).chmod(default_mode())  # safetensors writes it owner-only, whatever the umask
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=_json_default))
        # the folder's other entries (a user's notes, results saved in it) come along: linked, so that they are
        # in the old folder until the new one is in place, whenever this process is killed
        carry_over(path, staging, keep={CONFIG_FILE, WEIGHTS_FILE, STATE_FILE})
        replace_folder(staging, path)  # killed between its renames: `recover_interrupted_save` puts it back
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def recover_interrupted_save(path: str | Path) -> Path | None:
    """Put back the previous model of `path` when a save was killed between its two renames.

    `save_model` moves the old folder to ``.<name>.<pid>.old.tmp`` just before renaming the new one into place;
    when `path` is missing and such a folder of a process that no longer runs holds a model, it is renamed
    back to `path`. Returns the recovered folder, or None.
    """
    return recover_replaced_folder(path, is_model_folder)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild the model saved in the folder `path`, or the built-in model of that name (`builtin.resolve`: a
    model folder at `path` wins over a built-in of the same name); a missing, corrupted or foreign folder is a
    ValueError.

    device: "auto", "cpu", "cuda", "mps" or a torch device (`device.select_device`: one that is not available here
    is a ValueError that says which are); the weights are read on the CPU and the network moved there.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .builtin import resolve

    device = select_device(device)
    path = resolve(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    recover_interrupted_save(path)
    if not is_model_folder(path):
        from .builtin import names

        raise ValueError(
            f"{path} is not a napari-unet model folder (expected {CONFIG_FILE} and {WEIGHTS_FILE} in "
            f"it) nor a built-in model ({', '.join(names()) or 'none installed'})"
        )
    try:
        config = json.loads((path / CONFIG_FILE).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path / CONFIG_FILE} is not valid JSON ({error}); the model folder is corrupted") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f'{path / CONFIG_FILE} is not a napari-unet model config (no "format": "{FORMAT}")')
    version = config.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path / CONFIG_FILE} has format_version {version!r}; expected an integer")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} was saved by a newer napari-unet (format {version}); this one reads "
            f"format <= {FORMAT_VERSION}: upgrade napari-unet"
        )
    try:
        unet = UNetConfig.from_dict(check_unet_entry(config.get("unet")))
        normalization = Normalization.from_dict(check_json_object(config.get("normalization", {}), "normalization"))
        postprocess = PostprocessConfig.from_dict(check_json_object(config.get("postprocess", {}), "postprocess"))
        metadata = dict(check_json_object(config.get("metadata", {}), "metadata"))
        diameter = check_diameter(config.get("object_diameter", metadata.pop("object_diameter", None)))
        channels = ChannelChoice.from_dict(
            {k: v for k, v in check_json_object(config.get("input", {}), "input").items() if k != "in_channels"}
        )
        with torch.device("meta"):  # the shapes the config asks for, without allocating them
            expected = {k: tuple(v.shape) for k, v in UNet(unet).state_dict().items()}
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise ValueError(f"{path / CONFIG_FILE} has an invalid configuration: {error}") from error
    try:
        found = _weight_shapes(path / WEIGHTS_FILE)
        if found != expected:
            raise RuntimeError(_shape_difference(expected, found))
        state = load_file(path / WEIGHTS_FILE, device="cpu")  # checked on the CPU, then moved with the network
        net = UNet(unet)
        net.load_state_dict(state)
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError) as error:
        raise ValueError(f"{path / WEIGHTS_FILE} cannot be read ({error}); the model folder is corrupted") from error
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ValueError(f"the weights in {path} do not match its config.json ({first})") from error
    broken = [name for name, value in state.items() if value.is_floating_point() and not value.isfinite().all()]
    if broken:
        raise ValueError(
            f"{path / WEIGHTS_FILE} holds weights that are not finite numbers (NaN or infinity, in {broken[0]}"
            f"{f' and {len(broken) - 1} more' if len(broken) > 1 else ''}): the run that saved it diverged or the "
            "file was altered; train it again or use an earlier copy"
        )
    return ModelBundle(
        net.to(device),
        normalization,
        postprocess,
        metadata,
        channels=channels,
        object_diameter=None if diameter is None else float(diameter),
    )


def _channel_fix(expected: int, found: int) -> str:
    """What to do when an image gives `found` channels to a model that takes `expected`.

    >>> _channel_fix(2, 3)
    'choose 2 channels (e.g. --channels 0,1 / the Channels box)'
    """
    if expected == 1:
        return "choose one channel (e.g. --channels 0 / the Channels box) or grey conversion (--grey)"
    if found > expected:
        picks = ",".join(str(i) for i in range(expected))
        return f"choose {expected} channels (e.g. --channels {picks} / the Channels box)"
    return f"use an image with {expected} channels, or a model trained on {found}-channel images"


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        return {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}


def _shape_difference(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        return f"missing tensors {missing[:3]}, unexpected tensors {unexpected[:3]}"
    key = next(k for k in expected if expected[k] != found[k])
    return f"{key} has shape {found[key]}, the config asks for {expected[key]}"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("napari-unet-2015")
    except PackageNotFoundError:
        ours = "unknown"
    return {
        "napari_unet_version": ours,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a model config")
