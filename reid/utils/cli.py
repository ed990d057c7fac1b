"""Entry-point plumbing: user errors become one clear paragraph and a non-zero exit."""

from __future__ import annotations

import argparse
import runpy
import sys
import textwrap
from pathlib import Path
from typing import Callable

from reid.utils.errors import ReIDError


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
        sys.exit(1)
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
    """``--config NAME`` plus trailing ``KEY VALUE`` overrides, shared by every tool."""
    parser.add_argument("--config", "-c", default=None,
                        help="experiment file: a path, or a name found in configs/ (e.g. lfm_market.yml)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. SOLVER.MAX_EPOCHS 2 DATASETS.ROOT /data")
    return parser


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


# --------------------------------------------------------------------------------------------------
# Console scripts (setup.cfg): ``reid-train ...`` is ``python tools/train.py ...``.

#: The checkout's tools/ folder, which the console scripts run (there is one copy of each command).
TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"


def run_tool(name: str) -> None:
    """Run ``tools/<name>.py`` of this checkout as ``__main__``, with the command line as given."""
    script = TOOLS_DIR / f"{name}.py"
    if not script.is_file():
        _print_error(f"reid-{name.replace('_', '-')} runs {script}, which does not exist: the reid-* commands need "
                     "the source checkout they were installed from (pip install -e .). Clone the repository, or "
                     "use the Python API (reid.FeatureExtractor, reid.evaluation, reid.engine).")
        sys.exit(2)
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")


def tool_command() -> None:
    """The console scripts' entry point: ``reid-plot-cmc ARGS`` runs ``tools/plot_cmc.py ARGS``."""
    command = Path(sys.argv[0]).name
    run_tool(command.removeprefix("reid-").replace("-", "_").removesuffix(".exe"))
