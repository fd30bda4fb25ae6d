#!/usr/bin/env bash
# Try napari-unet: scripts/run.sh
# Sets up .venv (package + a Qt binding + the rois and export extras), then opens napari with the plugin's docks and the synthetic sample image.
# With no display (no $DISPLAY, no $WAYLAND_DISPLAY) it runs the headless demo instead: napari-unet demo --out out/demo --overwrite
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh"
cd "$REPO_ROOT"

if [ "$#" -gt 0 ]; then
    echo "usage: scripts/run.sh   (takes no arguments; see docs/install.md)" >&2
    exit 2
fi

setup_env qt,rois,export || exit 1  # a Qt binding, and what `rois` and `export` need, so every command runs

if ! has_display; then
    say "no display (\$DISPLAY and \$WAYLAND_DISPLAY are unset): running the headless demo instead of the viewer"
    say "  $VENV/bin/napari-unet demo --out out/demo --overwrite"
    exec "$VENV/bin/napari-unet" demo --out out/demo --overwrite  # a rerun replaces the earlier tour
fi

exec "$VENV_PYTHON" - <<'PY'
"""Open napari with every dock widget of the plugin and its synthetic sample image."""
import torch  # noqa: F401  (import torch before Qt)
import napari
import npe2

PLUGIN = "napari-unet-2015"
contributions = npe2.PluginManifest.from_distribution(PLUGIN).contributions
viewer = napari.Viewer()
samples = [sample.key for sample in contributions.sample_data or []]
if samples:
    viewer.open_sample(PLUGIN, next((key for key in samples if "synthetic" in key), samples[0]))
for widget in contributions.widgets or []:
    viewer.window.add_plugin_dock_widget(PLUGIN, widget.display_name, tabify=True)
napari.run()
PY
