#!/usr/bin/env python
"""Runs ``reid-plot-cmc`` (reid/cli/plot_cmc.py) from a checkout, without installing the package."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from reid.cli.plot_cmc import entry  # noqa: E402

if __name__ == "__main__":
    entry()
