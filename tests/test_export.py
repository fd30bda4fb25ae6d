"""Exports: bioimage.io's own prediction of a package (whole image and block by block) is napari-unet's; ONNX and
TorchScript equal torch and refuse the sizes the network cannot take."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from napari_unet.export import (
    ProbabilityUNet,
    check_rdf,
    example_input,
    export_bioimageio,
    export_model,
    input_size_rule,
    normalize_like_bioimageio,
    package_halo,
    package_size_rule,
    probability_net,
)
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, load_model, save_model


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(
        UNet(depth=3, base_channels=4, dropout=0.0),
        metadata={
            "training_data": {"name": "synthetic cells", "licence": "CC0-1.0", "url": "https://example.org/cells"},
        },
    )


@pytest.mark.parametrize(
    "config", [dict(depth=2), dict(depth=3), dict(depth=4, convs_per_level=3), dict(depth=3, padding="same")]
)
def test_input_size_rule_is_the_networks(config):
    net = UNet(base_channels=2, **config)
    minimum, step, offset = input_size_rule(net)
    assert all(net._output_size(n) is None for n in range(1, minimum))
    for n in range(6):
        side = minimum + n * step
        assert net.output_shape((side, side)) == (side + offset, side + offset)
        assert all(net._output_size(side + k) is None for k in range(1, step))


@pytest.mark.parametrize(("fmt", "name"), [("torchscript", "net.pt"), ("onnx", "net.onnx")])
def test_exports_equal_torch(bundle, fmt, name, tmp_path):
    path = export_model(bundle, fmt, tmp_path / name)
    reference = probability_net(bundle.net)
    minimum, step, _ = input_size_rule(bundle.net)
    for side, batch in ((minimum, 1), (minimum + 7 * step, 2), (minimum + 20 * step, 1)):
        x = torch.randn(batch, 1, side, side + step)
        expected = reference(x).detach().numpy()
        if fmt == "torchscript":
            got = torch.jit.load(str(path))(x).detach().numpy()
        else:
            onnxruntime = pytest.importorskip("onnxruntime")
            got = onnxruntime.InferenceSession(str(path)).run(None, {"raw": x.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("fmt", "name"), [("torchscript", "net.pt"), ("onnx", "net.onnx")])
def test_exported_files_refuse_sizes_the_network_cannot_take(bundle, fmt, name, tmp_path):
    """The valid network takes sides 44 + 4n (depth 3); traced, the size check was lost and the files returned
    silently wrong probabilities for the others (61 px: a 20 px map of the first 60 px). They now fail, and
    the error names the rule."""
    path = export_model(bundle, fmt, tmp_path / name)
    minimum, step, _ = input_size_rule(bundle.net)
    assert (minimum, step) == (44, 4)
    for shape in ((61, 48), (48, 62), (40, 40), (44 - 4, 44)):
        x = torch.rand(1, 1, *shape)
        if fmt == "torchscript":
            run = torch.jit.load(str(path))
            with pytest.raises(torch.jit.Error, match=r"input height and width must be 44 \+ 4n"):
                run(x)
        else:
            onnxruntime = pytest.importorskip("onnxruntime")
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            with pytest.raises(Exception, match=r"input height and width must be 44 \+ 4n"):
                session.run(None, {"raw": x.numpy()})
        with pytest.raises(ValueError, match=r"44 \+ 4n"):
            probability_net(bundle.net)(x)


def napari_unet_probs(model: ModelBundle, image: np.ndarray, percentiles_of: np.ndarray | None = None) -> np.ndarray:
    """napari-unet's probabilities of `image` (H, W), normalised with the percentiles of `percentiles_of` (default:
    the image, as `ModelBundle.predict` does)."""
    from napari_unet.tiling import predict_tiled

    if percentiles_of is None:
        return model.predict(image, diameter=None, device="cpu")
    low, high = np.percentile(percentiles_of, [model.normalization.low, model.normalization.high])
    return predict_tiled(
        model.net, image, None, device="cpu", preprocess=lambda w: ((w - low) / (high - low + 1e-6)).astype("float32")
    )


@pytest.mark.parametrize(
    ("config", "side", "blocks"),
    [
        (dict(depth=3, base_channels=4), 64, 5),  # halo 20 (the network's), step 4: 3 x 3 blocks of 64 px
        (dict(depth=5, base_channels=2), 288, 5),  # halo 92 is not a multiple of 16 / 2: 96; 3 x 4 blocks of 288
    ],
)
def test_bioimageio_predicts_napari_unets_probabilities_whole_and_blockwise(config, side, blocks, tmp_path):
    """bioimage.io's own `predict` of the package, with each weight format, at a size of the package's rule.
    Before, the package padded twice: bioimage.io padded the image by the declared halo and the network
    mirrored it again (pytorch_state_dict failed, ONNX and TorchScript gave a map 8 px smaller, blocks were off by
    up to 0.41). Block by block the output is napari-unet's probabilities; a whole image too, normalised with
    the percentiles of the image bioimageio.core has padded by the halo (it pads before it normalises)."""
    core = pytest.importorskip("bioimageio.core")
    torch.manual_seed(0)
    model = ModelBundle(UNet(dropout=0.0, **config))
    minimum, step = package_size_rule(model.net)
    halo = package_halo(model.net)
    image = example_input(model.net, side, package=True)[0, 0]
    image = np.concatenate([image, image[:, :step]], axis=1)  # H != W, both of the rule
    assert all(n >= minimum and (n - minimum) % step == 0 for n in image.shape)
    path = export_bioimageio(model, tmp_path / "cells")
    description = core.load_model_description(path / "rdf.yaml")
    ours = napari_unet_probs(model, image)
    ours_padded_percentiles = napari_unet_probs(model, image, np.pad(image, halo, mode="reflect"))

    def predict(weights: str, **kwargs) -> np.ndarray:
        pipeline = core.create_prediction_pipeline(description, weight_format=weights)
        sample = core.predict(model=pipeline, inputs={"raw": image[None, None]}, **kwargs)
        return sample.members["probabilities"].data.values[0]

    for weights in ("pytorch_state_dict", "torchscript", "onnx"):
        blockwise = predict(weights, blocksize_parameter=blocks)
        assert blockwise.shape == ours.shape
        np.testing.assert_allclose(blockwise, ours, atol=1e-5, err_msg=weights)
        whole = predict(weights)
        assert whole.shape == ours.shape
        np.testing.assert_allclose(whole, ours_padded_percentiles, atol=1e-5, err_msg=weights)


def test_bioimageio_package_passes_bioimageio_own_test_and_says_what_it_is(bundle, tmp_path):
    core = pytest.importorskip("bioimageio.core")
    path = export_bioimageio(bundle, tmp_path / "cells")
    summary = core.test_model(path / "rdf.yaml")
    failures = [d for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", summary.format()
    assert not failures
    tested = " ".join(d.name for d in summary.details)
    for weights in ("pytorch_state_dict", "torchscript", "onnx"):
        assert weights in tested
    text = (path / "README.md").read_text()
    assert "CC0-1.0" in text and "10.1007/978-3-319-24574-4_28" in text and "# Validation" in text.replace("##", "#")


def test_bioimageio_rdf_describes_the_network(bundle, tmp_path):
    import yaml

    path = export_bioimageio(bundle, tmp_path / "cells.zip")
    with zipfile.ZipFile(path) as archive:
        assert {
            "rdf.yaml",
            "weights.pt",
            "weights.onnx",
            "weights.torchscript.pt",
            "test_input.npy",
            "test_output.npy",
            "README.md",
        } <= set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    minimum, step = package_size_rule(bundle.net)
    halo = package_halo(bundle.net)
    assert rdf["format_version"].startswith("0.5")
    y_in = rdf["inputs"][0]["axes"][2]
    y_out = rdf["outputs"][0]["axes"][2]
    assert y_in["size"] == {"min": minimum, "step": step} and y_in["concatenable"]
    assert minimum == 2 * halo + step and (2 * halo) % step == 0  # blocks: inner parts of n * step px
    assert rdf["inputs"][0]["pad"] == {"mode": "reflect"}  # as napari-unet's overlap-tile pads
    assert y_out["size"] == {"tensor_id": "raw", "axis_id": "y", "offset": 0} and y_out["halo"] == halo
    kwargs = rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]
    assert kwargs == {"halo": halo, **bundle.net.config.to_dict()}
    rebuilt = ProbabilityUNet(**kwargs)
    assert rebuilt.net.halo <= rebuilt.halo == halo
    out = rebuilt(torch.rand(1, 1, minimum, minimum + step))
    assert out.shape == (1, 2, minimum, minimum + step)  # the input's size, its outer halo zeros
    assert out[..., :halo, :].abs().max() == 0 and out[..., halo:-halo, halo:-halo].sum(1).allclose(torch.tensor(1.0))
    assert export_bioimageio(bundle, path) == path  # a package zip is replaced by the new one (--overwrite)


def test_multichannel_models_export_and_test_tensors_match(tmp_path):
    bundle = ModelBundle(UNet(in_channels=2, depth=2, base_channels=4))
    path = export_bioimageio(bundle, tmp_path / "two")
    raw = np.load(path / "test_input.npy")
    out = np.load(path / "test_output.npy")
    assert raw.shape[:2] == (1, 2) and out.shape[:2] == (1, 2)
    expected = probability_net(bundle.net, package=True)(torch.from_numpy(normalize_like_bioimageio(raw, 1.0, 99.8)))
    np.testing.assert_allclose(out, expected.detach().numpy(), atol=1e-6)
    halo = package_halo(bundle.net)
    np.testing.assert_allclose(out[..., halo:-halo, halo:-halo].sum(axis=1), 1.0, atol=1e-5)


def test_model_folder_loads_as_before_after_export(bundle, tmp_path):
    folder = save_model(tmp_path / "cells.model", bundle)
    export_model(load_model(folder), "torchscript", tmp_path / "net.pt")
    again = load_model(folder)
    x = torch.from_numpy(normalize_like_bioimageio(example_input(again.net), 1.0, 99.8))
    torch.testing.assert_close(again.net.eval()(x), bundle.net.eval()(x))


def test_bad_export_requests_are_explained(bundle, tmp_path):
    with pytest.raises(ValueError, match="bioimageio, onnx, torchscript"):
        export_model(bundle, "keras", tmp_path / "x")
    with pytest.raises(ValueError, match=r"\(1, 1, H, W\)"):
        export_bioimageio(bundle, tmp_path / "x", test_input=np.zeros((1, 3, 64, 64), np.float32))
    for fmt, name in (("torchscript", "net.onnx"), ("onnx", "labels.tif"), ("onnx", "net")):
        with pytest.raises(ValueError, match=rf"--out {name}: an? \w+ export is written as a \.(pt|onnx) file"):
            export_model(bundle, fmt, tmp_path / name)
    for name in ("labels.tif", "net.onnx"):  # a package folder was made under the name of an image
        with pytest.raises(ValueError, match=rf"--out {name}: a bioimage.io package is written as a folder or a \.zip"):
            export_model(bundle, "bioimageio", tmp_path / name)
    assert not list(tmp_path.iterdir())
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(ValueError, match="not a bioimage.io package"):
        export_bioimageio(bundle, tmp_path / "taken")
    # names and licences bioimage.io rejects were written, and the export reported success
    with pytest.raises(ValueError, match=r"model name 'cells v2.1'.*not '\.'"):
        export_bioimageio(bundle, tmp_path / "named", name="cells v2.1")
    with pytest.raises(ValueError, match="SPDX identifier"):
        export_bioimageio(bundle, tmp_path / "named", license="MIT License")
    assert not (tmp_path / "named").exists()
    from napari_unet.export import default_package_name

    renamed = ModelBundle(bundle.net, metadata={"name": "HeLa nuclei, Müller lab v2.1"})
    assert default_package_name(renamed) == "HeLa nuclei- M-ller lab v2-1"


@pytest.mark.parametrize("invert", [True, "auto"])
def test_the_package_normalises_as_napari_unet_does_or_says_what_it_cannot(invert, tmp_path):
    """A model trained on inverted images (`Normalization.invert` True) exports its inversion as a `scale_linear`
    step, so the package's output is napari-unet's; "auto" (decided per image) cannot be a bioimage.io step:
    the package then takes dark-background images and says so. Both record the inversion and object size."""
    import yaml

    from napari_unet.modelfile import Normalization

    torch.manual_seed(0)
    model = ModelBundle(
        UNet(depth=3, base_channels=4, dropout=0.0), normalization=Normalization(invert=invert), object_diameter=20.0
    )
    path = export_bioimageio(model, tmp_path / "cells")
    rdf = yaml.safe_load((path / "rdf.yaml").read_text())
    steps = [step["id"] for step in rdf["inputs"][0]["preprocessing"]]
    assert steps == (["scale_range", "scale_linear"] if invert is True else ["scale_range"])
    assert rdf["config"]["napari_unet"]["normalization"]["invert"] == invert
    assert rdf["config"]["napari_unet"]["object_diameter"] == 20.0
    raw, expected = np.load(path / "test_input.npy"), np.load(path / "test_output.npy")
    ours = model.predict(raw[0], diameter=None, device="cpu")  # a dark background: the whole image, as ours
    assert expected.shape[-2:] == raw.shape[-2:]
    halo = package_halo(model.net)  # 20, a multiple of the step: the test input is on napari-unet's grid
    np.testing.assert_allclose(expected[0][:, halo:-halo, halo:-halo], ours[:, halo:-halo, halo:-halo], atol=1e-4)
    if invert == "auto":
        assert "Invert bright-background images first" in rdf["inputs"][0]["description"]
        assert "invert such images yourself" in (path / "README.md").read_text()
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(path / "rdf.yaml")
    if summary.status != "passed" and "'index_key' is expected to be an integer" in summary.format():
        pytest.skip("this bioimageio.spec cannot serialise with the installed pydantic-core")
    assert summary.status == "passed", summary.format()


def test_the_package_keeps_what_the_model_records_and_refuses_what_bioimageio_would(tmp_path):
    """The built-in model's record of its training data (image sets), its licence text, citations and
    description reach the package; a licence bioimage.io does not know and a training-data URL that is no web
    address are refused before any work."""
    import yaml

    model = ModelBundle(
        UNet(depth=2, base_channels=4),
        metadata={
            "training_data": {"set-a": ["1.png", "2.png"], "set-b": ["3.png"], "held_out_set-a": ["4.png"]},
            "license": "BSD-3-Clause (weights); trained only on CC0 data",
            "citations": ["Ronneberger, Fischer, Brox. U-Net.", "Someone et al. The data. Journal 1:2 (2019)."],
            "description": "Generalist nuclei model.",
        },
    )
    path = export_bioimageio(model, tmp_path / "pkg")
    readme = (path / "README.md").read_text()
    assert "- data: set-a (2 images), set-b (1 images)" in readme
    assert (
        "licence of the training data: BSD-3-Clause (weights); trained only on CC0 data (the model's record)" in readme
    )
    assert "- Someone et al. The data. Journal 1:2 (2019)." in readme and readme.count("Ronneberger") == 2
    assert yaml.safe_load((path / "rdf.yaml").read_text())["description"].startswith("Generalist nuclei model.")
    pytest.importorskip("bioimageio.spec")
    with pytest.raises(ValueError, match="licence 'Foo-Bar-1': give an SPDX identifier"):
        export_bioimageio(model, tmp_path / "x", license="Foo-Bar-1")
    with pytest.raises(ValueError, match="training data URL 'notaurl'"):
        export_bioimageio(model, tmp_path / "x", training_data={"url": "notaurl"})
    assert not (tmp_path / "x").exists()


def test_what_bioimageio_rejects_is_refused_or_written_as_it_takes_it(tmp_path):
    """Author names with '/' or '\\', training-data DOIs given as links and `halo: 0` (a 'same'-padding model)
    made packages that bioimage.io rejects, written with exit code 0. Names are refused before any work, a DOI
    link is written as the DOI, and every description is validated by bioimageio.spec first (`check_rdf`)."""
    spec = pytest.importorskip("bioimageio.spec")
    import yaml

    model = ModelBundle(UNet(depth=2, base_channels=4))
    for name in ("Lab A/B", "Lab A\\B"):
        with pytest.raises(ValueError, match=r"author name .*: bioimage.io takes no '/' or '\\'"):
            export_bioimageio(model, tmp_path / "x", authors=[{"name": name}])
    with pytest.raises(ValueError, match="training data DOI 'not a doi'"):
        export_bioimageio(model, tmp_path / "x", training_data={"citation": "Foo 2020", "doi": "not a doi"})
    assert not list(tmp_path.iterdir())

    cited = {"citation": "Foo et al. 2020", "doi": "https://doi.org/10.5281/zenodo.1234567"}
    path = export_bioimageio(model, tmp_path / "doi", training_data=cited)
    rdf = yaml.safe_load((path / "rdf.yaml").read_text())
    assert {"text": "Foo et al. 2020", "doi": "10.5281/zenodo.1234567"} in rdf["cite"]
    assert type(spec.load_description(path / "rdf.yaml")).__name__ == "ModelDescr"

    same = ModelBundle(UNet(depth=2, base_channels=4, padding="same"))
    path = export_bioimageio(same, tmp_path / "same")
    described = spec.load_description(path / "rdf.yaml")
    assert type(described).__name__ == "ModelDescr", described.validation_summary.format()
    assert all(a.get("halo", 1) > 0 for a in yaml.safe_load((path / "rdf.yaml").read_text())["outputs"][0]["axes"])

    rdf["outputs"][0]["axes"][2]["halo"] = 0  # what the checks before it do not know of: bioimageio.spec's words
    with pytest.raises(ValueError, match=r"bioimage.io would reject this package: outputs\.0\.axes\.2.*halo"):
        check_rdf(rdf, tmp_path)


KILLED_EXPORT = """
import os, signal, sys
from napari_unet import export
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle

def killed(*args, **kwargs):  # kill -9 half-way: the TorchScript weights are written, the ONNX ones not
    os.kill(os.getpid(), signal.SIGKILL)

export.export_onnx = killed
export.export_bioimageio(ModelBundle(UNet(depth=2, base_channels=4)), sys.argv[1])
"""


@pytest.mark.parametrize("name", ["cells.zip", "cells"])
def test_a_killed_export_leaves_a_temporary_that_the_next_export_removes(name, tmp_path):
    """`kill -9` during an export left its staging folder (`.export.XXXX`, tempfile's) for good; it is now a
    temporary sibling of the package (`.<name>.<pid>.<random>.tmp`) that the next export of it removes."""
    target = tmp_path / name
    killed = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(target)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(f".{name}.") and left.name.endswith(".tmp") and (left / "weights.pt").is_file()
    export_bioimageio(ModelBundle(UNet(depth=2, base_channels=4)), target)
    assert [p.name for p in tmp_path.iterdir()] == [name]
