"""Entry-point plumbing: user errors become one clear paragraph and a non-zero exit."""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
from pathlib import Path
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
    except KeyboardInterrupt as exc:
        # A long command re-raises Ctrl-C with where its work is and how to continue (e.g. training's checkpoint).
        text = textwrap.fill(str(exc), width=100, break_on_hyphens=False, break_long_words=False)
        print("\n" + (text or "Interrupted."), file=sys.stderr)
        sys.exit(130)


def _print_error(message: str) -> None:
    """The message's first line as a wrapped paragraph; later lines (a table, a list) kept as they are."""
    first, *rest = message.splitlines() or [""]
    # Paths are never split (at a hyphen or inside a long name): a path in a message must stay copyable.
    wrapped = textwrap.fill(first, width=100, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False)
    lines = ["Error: " + wrapped] + ["  " + line for line in rest]
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


def command_line(option: str = "") -> str:
    """How this process was started, to repeat it, with ``option`` (e.g. ``--resume``) added when missing:
    right after the program, since everything after the first KEY VALUE override is read as overrides."""
    program = Path(sys.argv[0])
    words = ["python", str(program)] if program.suffix == ".py" else [program.name]
    if option and option not in sys.argv[1:]:
        words.append(option)
    return " ".join(shlex.quote(word) for word in words + sys.argv[1:])
