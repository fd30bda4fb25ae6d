#!/usr/bin/env bash
# Run the style checks (ruff) and the test suite: scripts/test.sh [pytest args]
# Sets up .venv with the `testing` extra, installs the Debian packages the viewer tests need (when root and
# something is missing), and runs pytest under a virtual X server (xvfb-run) when there is no display.
# Under CI=true a missing viewer set-up is an error instead of a skip.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh"
cd "$REPO_ROOT"

setup_env testing || exit 1

viewer_ready=true
ensure_viewer_packages || viewer_ready=false

# Style first (seconds): ruff's lint and its formatter's check, configured in pyproject.toml.
"$VENV_PYTHON" -m ruff check . || { say "ruff check failed: fix the lines above (many with: .venv/bin/ruff check --fix .)"; exit 1; }
"$VENV_PYTHON" -m ruff format --check . || { say "ruff format: run .venv/bin/ruff format . to format the files above"; exit 1; }

pytest=("$VENV_PYTHON" -m pytest "$@")
if has_display; then
    exec "${pytest[@]}"
fi
if [ "$viewer_ready" = true ] && command -v xvfb-run >/dev/null 2>&1; then
    say "no display: running the tests under xvfb-run"
    exec xvfb-run --auto-servernum --server-args='-screen 0 1280x1024x24' "${pytest[@]}"
fi
if [ "${CI:-}" = true ]; then
    say "CI: no display and no Xvfb, so the viewer tests could not run; failing."
    exit 1
fi
say "no display and no Xvfb: the viewer tests will be skipped."
exec "${pytest[@]}"
