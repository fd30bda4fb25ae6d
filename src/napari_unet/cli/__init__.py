"""The `napari-unet` command: train, predict, weights, evaluate, info, measure, rois, export and demo.

Each subcommand translates its arguments into the config objects the library uses (`preset`, `TrainConfig`,
`PostprocessConfig`, ...) and consumes the same generators as the napari widgets (`Trainer.run`,
`pipeline.segment_file`), drawing a progress bar on stderr. Results and summaries go to stdout.

Exit codes: 0 success; 1 training diverged (the last good state is kept); 2 bad input (a one-line
"napari-unet: error: ..." message; `napari-unet --traceback ...` shows the traceback); 141 stdout's reader went
away (`| head`), silently; 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM (a training run stops at its next
step and saves it first; a second signal exits at once, see `_signals`). Every file is written under a temporary name and renamed when complete; an
output is never one of the inputs, and an existing output is replaced only with --overwrite.

Layout: one module per command group, each with `add_parser(subparsers)` (its options) and
`run(args) -> int` (the work; returns the exit code): `train`, `predict`, `evaluate` (evaluate, weights,
info), `measure` (measure, rois), `export`, `demo`. `_args` holds the exit codes, the help layout and the argument types that check ranges;
`progress` what the commands print on stderr.

To add a command: write `cli/<name>.py` with `add_parser(subparsers)`, which calls
`_args.add_command(subparsers, name, summary, description, examples, run)` and adds the options, and
`run(args) -> int`, which imports the library inside the function (so `napari-unet --help` stays fast), raises
ValueError or OSError for bad input (`main` turns them into exit code 2) and returns an `EXIT_*` code; add the
module to `COMMANDS` below, a test to tests/test_cli.py and a section to docs/cli.md.

>>> main(["weights", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from collections.abc import Sequence

from . import _signals, demo, evaluate, export, measure, predict, train
from ._args import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE

COMMANDS = (train, predict, evaluate, measure, export, demo)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse has already explained
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    with _signals.installed():
        try:
            code = args.run(args)
            sys.stdout.flush()  # a reader that went away shows here, not as a message at the interpreter's exit
            return code
        except BrokenPipeError as error:
            if not _stdout_gone():  # another pipe or socket (a cluster's connection): an error like any other
                print(f"napari-unet: error: {error}", file=sys.stderr)
                return EXIT_USAGE
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to say, no one to say it to
            return EXIT_BROKEN_PIPE
        except KeyboardInterrupt as interrupt:  # SIGINT or SIGTERM (`_signals.Interrupted`), or Ctrl-C
            print("napari-unet: interrupted", file=sys.stderr)
            return getattr(interrupt, "exit_code", EXIT_INTERRUPTED)
        except (ValueError, OSError) as error:  # bad input: files, shapes, options; FileNotFoundError is an OSError
            if args.traceback:
                raise
            print(f"napari-unet: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except ImportError as error:  # an optional package this command needs (roifile, onnx, distributed)
            if args.traceback:
                raise
            missing = isinstance(error, ModuleNotFoundError) and str(error).startswith("No module named")
            message = f"this needs the Python package {error.name!r}, which is not installed" if missing else error
            print(f"napari-unet: error: {message}", file=sys.stderr)
            return EXIT_USAGE


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (`napari-unet info m | head -1`)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (captured output), or no poll (Windows)
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net (Ronneberger et al. 2015) for cell segmentation: train on a few annotated images, "
        "segment new ones, score them.",
        epilog="Run 'napari-unet COMMAND --help' for each command's options; 'napari-unet demo' for a tour.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback of input errors")
    parser.set_defaults(traceback=False)
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-unet-2015")
    except PackageNotFoundError:
        return "unknown"
