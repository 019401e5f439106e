"""skuld's benchmarks: each module is a script that measures one thing and writes its numbers to
``benchmarks/results/<name>.json`` and a Markdown table ``<name>.md``.

Run a script as a module from the repository root, with skuld installed (``pip install -e .``)::

    python -m benchmarks.<name> [args]          # e.g. python -m benchmarks.pixel_index --help

The scripts share their results writer, data loaders and the one-shot landmark helpers through
:mod:`benchmarks.common`; the real data sets are read from ``shared/data`` beside the
repository (:mod:`benchmarks.common.data`).
"""
