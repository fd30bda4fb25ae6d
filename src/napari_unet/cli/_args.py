"""Pieces every command uses: the exit codes, the help layout, argument types that check ranges, shared options."""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout's reader went away (`napari-unet info m | head -1`), as other tools exit


class HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs, keeps indented example lines as written, shows the defaults that say something."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if paragraph.startswith("  ") or "\n  " in paragraph:
                paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                paragraphs.append(
                    textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and action.default not in (None, False, argparse.SUPPRESS)
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text


def add_command(
    subparsers,
    name: str,
    summary: str,
    description: str,
    examples: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """A subcommand `name` whose parsed arguments go to `run(args)` (it returns the exit code)."""
    sub = subparsers.add_parser(
        name,
        help=summary,
        description=f"{summary}\n\n{description}".strip(),
        epilog=f"examples:\n{examples}",
        formatter_class=HelpFormatter,
    )
    sub.set_defaults(run=run)
    return sub


def add_device(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda,mps}",
        help="where the network runs ('cuda:1' picks a GPU); auto: CUDA, then MPS, then the CPU",
    )


def add_precision(group, default: str | None = "auto") -> None:
    """--precision: the number format of the network's arithmetic (`precision.py`)."""
    group.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=default,
        help="auto: bf16 autocast on CUDA, fp32 elsewhere"
        + ("" if default else " (default: auto; with --resume: the saved run's)"),
    )


def add_overwrite(sub: argparse.ArgumentParser, what: str = "--out") -> None:
    sub.add_argument("--overwrite", action="store_true", help=f"replace {what} if it exists")


def add_quiet(sub: argparse.ArgumentParser, what: str = "no progress bar") -> None:
    sub.add_argument("-q", "--quiet", action="store_true", help=what)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), e.g. 0.2, got {text}")
    return value


def add_channel_options(group, what: str) -> None:
    """--channels and --grey: which channels of the images (see `channels.ChannelChoice`)."""
    group.add_argument(
        "--channels",
        metavar="LIST",
        help=f"comma-separated channel indices {what}, e.g. 0,2 (RGB: 0 red, 1 green, 2 blue)",
    )
    group.add_argument(
        "--grey",
        action="store_true",
        help="convert the (chosen) channels to one grey plane (RGB: luminance; others: their mean)",
    )


def channel_choice_option(args: argparse.Namespace):
    """The `ChannelChoice` given with --channels/--grey, or None when neither is given."""
    from ..channels import ChannelChoice, parse_channels

    if args.channels is None and not args.grey:
        return None
    return ChannelChoice(parse_channels(args.channels) if args.channels is not None else None, args.grey)


def diameter(text: str) -> float | str:
    """--diameter: "auto" or a number of pixels > 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a diameter in pixels, got {text}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a diameter in pixels > 0, got {text}")
    return value


def add_diameter(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--diameter",
        type=diameter,
        default="auto",
        metavar="{auto,PX}",
        help="diameter of the objects in the images (px): each image is rescaled so they have the "
        "model's object diameter before the network ('napari-unet models' lists it), results come "
        "back at the image's size; auto: estimated on each file; the model's own diameter: no "
        "rescaling. Models without an object diameter never rescale",
    )
