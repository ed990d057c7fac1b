"""The command-line tools as package functions: ``reid-train`` is :func:`reid.cli.train.entry`.

Each module parses its arguments in ``main(argv)`` and runs the library; ``entry()`` wraps ``main`` so a user
error prints one paragraph and exits non-zero. ``tools/<name>.py`` in a checkout runs the same function.
"""
