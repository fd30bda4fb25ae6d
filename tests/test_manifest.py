"""The npe2 manifest: valid, importable, packaged, and found by napari through the entry point."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import subprocess
import sys
from pathlib import Path

import yaml

DISTRIBUTION = "napari-unet-2015"
REPO_ROOT = Path(__file__).resolve().parents[1]


def test_npe2_validate_with_imports_passes() -> None:
    """The command plugin authors run: schema check plus an import of every `python_name`."""
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "--imports", DISTRIBUTION],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_top_level_manifest_is_the_packaged_file() -> None:
    top_level = REPO_ROOT / "napari.yaml"
    in_source = REPO_ROOT / "src" / "napari_unet" / "napari.yaml"
    assert top_level.resolve() == in_source.resolve(), f"{top_level} should be a link to {in_source}"
    installed = importlib.resources.files("napari_unet") / "napari.yaml"
    assert installed.read_text() == in_source.read_text(), "the installed napari.yaml differs from the source one"


def test_entry_point_names_the_packaged_manifest() -> None:
    (entry_point,) = [ep for ep in importlib.metadata.entry_points(group="napari.manifest") if ep.name == DISTRIBUTION]
    package, resource = entry_point.value.split(":")
    manifest = yaml.safe_load((importlib.resources.files(package) / resource).read_text())
    assert manifest["name"] == DISTRIBUTION


def test_plugin_manager_discovers_the_manifest() -> None:
    """What napari does at start-up: discovery through the `napari.manifest` entry point."""
    from npe2 import PluginManager

    manager = PluginManager()
    manager.discover(include_npe1=False)
    manifest = manager.get_manifest(DISTRIBUTION)
    assert manifest.package_metadata is not None
    assert manifest.package_metadata.name == DISTRIBUTION
