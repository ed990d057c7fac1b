#!/usr/bin/env python
"""Runs ``reid-search`` (reid/cli/search.py) from a checkout, without installing the package."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from reid.cli.search import entry  # noqa: E402

if __name__ == "__main__":
    entry()
