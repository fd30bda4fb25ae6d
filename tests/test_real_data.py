"""The real-data benchmark's loading and splitting (benchmarks/bench_real_data.py) on ../shared/data.

Skipped when the data is absent (a user's fresh clone); the end-to-end run trains, so it is marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """benchmarks/bench_real_data.py as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("bench_real_data", BENCHMARKS / "bench_real_data.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_real_data", None)
        sys.path.remove(str(BENCHMARKS))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 60), data=st.data())
def test_split_ids_partitions_whole_images_deterministically(bench, n, data):
    n_train = data.draw(st.integers(1, n - 1))
    n_validation = data.draw(st.integers(1, n - n_train))
    seed = data.draw(st.integers(0, 1000))
    ids = [f"img{i:03d}" for i in data.draw(st.permutations(range(n)))]
    train, validation = bench.split_ids(ids, n_train, n_validation, seed)
    assert len(train) == n_train and len(validation) == n_validation
    assert not set(train) & set(validation) and set(train) | set(validation) <= set(ids)
    assert train == sorted(train) and validation == sorted(validation)
    assert bench.split_ids(list(reversed(ids)), n_train, n_validation, seed) == (train, validation)


def test_split_ids_refuses_too_few_or_repeated_ids(bench):
    with pytest.raises(ValueError, match="distinct ids"):
        bench.split_ids(["a", "b", "c"], 3, 1)
    with pytest.raises(ValueError, match="distinct ids"):
        bench.split_ids(["a", "a", "b"], 1, 1)


def test_isbi_split_is_by_slice_with_binary_labels(bench, shared_data):
    split = bench.load_isbi(shared_data)
    assert [item.name for item in split.train] == [f"{i:02d}" for i in range(15)]
    assert [item.name for item in split.validation] == [f"{i:02d}" for i in range(15, 20)]
    for item in split.train + split.validation:
        assert item.image.shape == item.labels.shape == (512, 512)
        assert item.image.dtype == np.float32
        assert set(np.unique(item.labels).tolist()) == {0, 255}
        low, high = np.percentile(item.image, [1.0, 99.8])
        assert abs(low) < 1e-3 and abs(high - 1.0) < 1e-3


def test_isbi_masks_tile_the_image_and_dsb_nuclei_masks_do_not(bench, shared_data):
    """`targets.cells_tile_image` on the real masks: every ISBI slice's membranes (0.9-6.8 % of the background
    more than 8 px from a cell), no DSB nuclei mask (37-99 %)."""
    from napari_unet.targets import cells_tile_image

    isbi = bench.load_isbi(shared_data)
    assert all(cells_tile_image(item.labels) for item in isbi.train + isbi.validation)
    dsb = bench.load_dsb(shared_data, seed=0)
    assert not any(cells_tile_image(item.labels) for item in dsb.train + dsb.validation)


def test_dsb_split_is_80_20_by_image_and_seeded(bench, shared_data):
    split = bench.load_dsb(shared_data, seed=0)
    train = [item.name for item in split.train]
    validation = [item.name for item in split.validation]
    assert len(train) == 80 and len(validation) == 20 and not set(train) & set(validation)
    assert train == sorted(train) and validation == sorted(validation)
    ids = sorted(p.stem for p in (shared_data / "dsb2018-fluo" / "train" / "images").glob("*.png"))
    assert sorted(train + validation) == ids
    assert bench.split_ids(ids, 80, 20, seed=0) == (train, validation)
    assert bench.split_ids(ids, 80, 20, seed=1) != (train, validation)
    for item in split.validation:
        assert item.image.ndim == 2 and item.image.shape == item.labels.shape
        assert np.issubdtype(item.labels.dtype, np.integer) and item.labels.max() >= 1


@pytest.mark.slow
def test_quick_benchmark_writes_both_pipelines(bench, shared_data, tmp_path):
    pytest.importorskip(
        "monai",
        reason="needs the MONAI peer: .venv/bin/pip install --no-deps monai (the 'peer' extra; --no-deps keeps torch)",
    )
    argv = [
        "--dataset",
        "isbi",
        "--quick",
        "--budget",
        "3",
        "--no-tta",
        "--device",
        "cpu",
        "--data",
        str(shared_data),
        "--out",
        str(tmp_path),
    ]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "real_isbi_quick.json").read_text())
    assert result["split"]["validation"] == ["15", "16"]
    for pipeline in ("ours", "peer"):
        assert result[pipeline]["iterations"] >= 1
        assert 0.0 <= result[pipeline]["scores"]["vrand"] <= 1.0
        assert 0.0 <= result[pipeline]["scores"]["pixel_error"] <= 1.0
