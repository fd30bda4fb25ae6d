"""What a new user does: the sample from napari's File > Open Sample menu, every dock from the Plugins menu."""

from __future__ import annotations

import npe2
import pytest

from napari_unet.plugin._reader import PLUGIN

pytestmark = pytest.mark.viewer


def test_sample_and_every_dock_open_from_the_menus(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells")
    assert [layer.name for layer in viewer.layers] == ["cells (synthetic)", "cells labels"]
    widgets = npe2.PluginManifest.from_distribution(PLUGIN).contributions.widgets
    names = [widget.display_name for widget in widgets]
    assert names == ["Fine-tune", "Segment", "Batch", "Weight map", "Augmentation preview", "Measure"]
    for name in names:
        _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
        if hasattr(widget, "reset_choices"):  # the docks that list layers (Batch lists none)
            widget.reset_choices()
    assert len(viewer.window.dock_widgets) == len(names)
