"""Entry-point plumbing: user errors become one clear paragraph and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Callable

from reid.utils.errors import ReIDError
from reid.utils.plugins import load_plugins


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main``; a user error (ReIDError, or a file the OS refuses) prints one paragraph and exits non-zero."""
    try:
        main()
    except ReIDError as exc:
        _print_error(_user_message(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:  # an unwritable output folder, a full disk, a path that is a file...
        if exc.filename is None:
            raise
        target = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        _print_error(f"Cannot access {target}: {exc.strerror or exc}. Check the path and its permissions.")
        sys.exit(ReIDError.exit_code)  # a path the user gave: an input error like any other
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        sys.exit(130)


def _print_error(message: str) -> None:
    """The message's first line as a wrapped paragraph; later lines (a table, a list) kept as they are."""
    first, *rest = message.splitlines() or [""]
    lines = ["Error: " + textwrap.fill(first, width=100, subsequent_indent="  ")] + ["  " + line for line in rest]
    print("\n" + "\n".join(lines), file=sys.stderr)


def _user_message(exc: ReIDError) -> str:
    """The error's own message; a DataLoader worker re-raises it wrapped in the worker's traceback."""
    message = str(exc)
    if "Original Traceback" in message:
        marker = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        message = message.rsplit(marker, 1)[-1].strip()
    return message


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--config NAME``, ``--plugin FILE`` and trailing ``KEY VALUE`` overrides, shared by every tool."""
    parser.add_argument("--config", "-c", default=None,
                        help="experiment file: a path, or the name of a shipped config (e.g. lfm_market.yml)")
    add_plugin_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. SOLVER.MAX_EPOCHS 2 DATASETS.ROOT /data")
    return parser


def add_plugin_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--plugin", "-p", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="import a .py file or module that registers components (a regulariser, loss, "
                             "dataset...) before the config is read; repeatable")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, then the ``--plugin`` imports, so their components and keys exist."""
    args = parser.parse_args(argv)
    load_plugins(getattr(args, "plugin", None) or [])
    return args


def parser_from_docstring(doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the docstring's first line and whose epilog (examples) is the rest."""
    lines = doc.strip().splitlines()
    return argparse.ArgumentParser(description=lines[0], epilog="\n".join(lines[1:]),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_extractor_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--weights``, ``--batch-size`` and ``--device`` of the tools that run a FeatureExtractor."""
    parser.add_argument("--weights", "-w", required=True, help="training checkpoint or release file")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    return parser
