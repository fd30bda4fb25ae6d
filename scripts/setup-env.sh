#!/usr/bin/env bash
# Set-up shared by scripts/run.sh and scripts/test.sh: a virtual environment at .venv with napari-unet installed.
#
#   scripts/setup-env.sh [EXTRA]       create/update .venv with the package and EXTRA (default: testing)
#   source scripts/setup-env.sh        define the functions below without running anything
#
# Functions once sourced:
#   setup_env EXTRA          create .venv when needed; when it has no torch, install torch==$TORCH_PIN first
#                            (the CPU wheel of that version lies on the developers' and CI machines; letting pip
#                            resolve the package's `torch>=2.4` picks a newer, multi-GB CUDA build from PyPI);
#                            then `pip install -e '.[EXTRA]'` with the installed torch pinned.
#                            Skipped when the stamp in .venv says the install is current.
#   ensure_viewer_packages   install the Debian packages viewer tests need (Xvfb, OpenGL, Qt's xcb libraries)
#   has_display              true when an X or Wayland display is available
# Variables: REPO_ROOT, VENV, VENV_PYTHON.

TORCH_PIN=2.13.0
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$REPO_ROOT/.venv
VENV_PYTHON=$VENV/bin/python

VIEWER_DEB_PACKAGES=(
    xvfb libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-shape0 libdbus-1-3 libfontconfig1
)

say() { printf '[setup] %s\n' "$*" >&2; }

python_is_recent() {  # python_is_recent EXE: true when EXE runs and is Python >= 3.11
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_base_python() {  # prints python3.11 if it works, else python3 when it is >= 3.11
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && python_is_recent "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    say "napari-unet needs Python >= 3.11; found: $(python3 --version 2>&1 || echo 'no python3')."
    say "Install it (Debian: apt-get install python3.11 python3.11-venv) and run this again."
    return 1
}

install_key() {  # what the stamp records: the dependency list, the interpreter, where the checkout lives
    {
        cat "$REPO_ROOT/pyproject.toml"
        "$VENV_PYTHON" -c 'import sys; print(sys.version)'
        echo "$REPO_ROOT torch==$TORCH_PIN"
    } | sha256sum | cut -d' ' -f1
}

setup_env() {  # setup_env EXTRA
    local extra=${1:-testing}
    local stamp=$VENV/.installed-$extra
    local base_python

    if ! python_is_recent "$VENV_PYTHON"; then
        base_python=$(find_base_python) || return 1
        say "creating $VENV with $base_python ($("$base_python" --version 2>&1))"
        "$base_python" -m venv --clear "$VENV" || {
            say "could not create the virtual environment (Debian: apt-get install python3-venv)."
            return 1
        }
        "$VENV_PYTHON" -m pip install --quiet --upgrade pip || return 1
    fi

    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(install_key)" ]; then
        return 0
    fi

    local pip=("$VENV_PYTHON" -m pip install --quiet)
    if ! "$VENV_PYTHON" -c 'import torch' >/dev/null 2>&1; then
        say "installing torch==$TORCH_PIN first (put the torch you want in .venv before, e.g. a CUDA build, and it is kept)"
        "${pip[@]}" "torch==$TORCH_PIN" || return 1
    fi
    local torch_version constraint
    torch_version=$("$VENV_PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))') || return 1
    constraint=$(mktemp)
    echo "torch==$torch_version" > "$constraint"
    say "installing napari-unet-2015[$extra] in editable mode (a few minutes the first time; torch $torch_version kept)"
    "${pip[@]}" --constraint "$constraint" -e "$REPO_ROOT[$extra]"
    local status=$?
    rm -f "$constraint"
    [ "$status" -eq 0 ] || return "$status"
    if [ "$extra" = testing ]; then
        # bioimageio.core 0.11 pins bioimageio.spec==0.5.12.0, which fails with the pydantic-core pip installs
        # today ("'index_key' is expected to be an integer"); 0.5.14 works (tests/test_export.py runs its test)
        "${pip[@]}" --no-deps "bioimageio.spec>=0.5.14" 2>/dev/null || say "bioimageio.spec>=0.5.14 could not be installed: the bioimage.io test will skip"
    fi
    install_key > "$stamp"
}

missing_viewer_packages() {  # prints the Debian packages of VIEWER_DEB_PACKAGES that are not installed
    local package
    for package in "${VIEWER_DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null | grep -q '^ii' || echo "$package"
    done
}

ensure_viewer_packages() {  # returns 1 when packages are still missing afterwards
    if ! command -v dpkg-query >/dev/null 2>&1; then
        command -v xvfb-run >/dev/null 2>&1 && return 0
        say "not a Debian system: install Xvfb, Mesa OpenGL and Qt's xcb libraries yourself for the viewer tests."
        return 1
    fi
    local missing
    missing=$(missing_viewer_packages)
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "the viewer tests need these Debian packages; install them with:"
        say "  sudo apt-get install $(echo $missing)"
        return 1
    fi
    say "installing Debian packages for the viewer tests: $(echo $missing)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq &&
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing >/dev/null || {
        say "apt-get failed; install by hand: apt-get install $(echo $missing)"
        return 1
    }
}

has_display() {
    [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -u
    setup_env "${1:-testing}"
fi
