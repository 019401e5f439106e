"""The one writer of ``benchmarks/results/``: ``<out>.json`` with a metadata block, ``<out>.md``.

Every JSON a benchmark writes carries one block under the key ``"meta"``, with the same
fields for every script (:func:`run_metadata`): the commit and whether the work tree had
uncommitted changes, the command, the date, the CPU or GPU, the thread counts and the
versions. Scripts that accumulate records over several runs (``transfer``, ``shape_guided``,
``shape_guided_lungs``) rewrite the block on every save: it describes the last run that wrote
the file.

Both files are written atomically (a temporary file in the same folder, then ``os.replace``),
so a run interrupted while writing, or another process reading, never sees half a file.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path

from benchmarks.common import ROOT

#: Where the committed measurements live; each script's default ``--out`` is in here.
RESULTS_DIR = ROOT / "benchmarks" / "results"


def git_state() -> dict:
    """The repository's commit and whether its work tree differs from it.

    Returns
    -------
    dict
        ``commit``: ``git rev-parse HEAD``; ``uncommitted_changes``: True when tracked files
        are modified or untracked (not ignored) files exist, outside ``benchmarks/results/``
        (a run that accumulates records rewrites its own results file between saves: that is
        output, not code). Both are None when git, or the repository, is unavailable.
    """
    # GIT_OPTIONAL_LOCKS=0: git status would otherwise refresh the index under its lock, and a
    # benchmark must not get in the way of a commit made while it runs.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
                              check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": commit, "uncommitted_changes": bool(status.strip())}


def command_line(argv: list[str] | None = None) -> str:
    """``python -m benchmarks.<name> ...``: the running script and its arguments as given.

    Parameters
    ----------
    argv : list of str, optional
        The script's arguments (default ``sys.argv[1:]``); scripts whose ``main`` takes an
        ``argv`` pass it on.
    """
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    args = sys.argv[1:] if argv is None else list(argv)
    # Run with -m, __main__'s spec names the module; otherwise (a file, python -c) the command
    # is told as it was.
    start = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    return shlex.join([*start, *args])


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def run_metadata(argv: list[str] | None = None, device: str | None = None) -> dict:
    """The metadata block of one run, the same fields for every script.

    Parameters
    ----------
    argv : list of str, optional
        The script's arguments (default ``sys.argv[1:]``).
    device : str, optional
        The torch device the measurements ran on, for scripts that choose one (``--device``);
        by default CUDA counts as used when this process initialised it.

    Returns
    -------
    dict
        ``commit``, ``uncommitted_changes`` (:func:`git_state`), ``command``
        (:func:`command_line`), ``date`` (ISO 8601, local time with its offset), ``cpu``
        (``platform.processor()`` or the machine type), ``cuda_device`` (the GPU's name when
        CUDA was used, else None), ``torch_threads`` (``torch.get_num_threads()``, torch's
        intra-op threads), ``cpu_count`` (``os.cpu_count()``), ``omp_num_threads`` (the
        environment variable, None when unset), ``faiss_threads`` (FAISS's OpenMP threads
        where the script imported faiss, else None), and the ``python``, ``torch``,
        ``sklearn`` and ``skuld`` versions.
    """
    import sklearn
    import torch

    cuda = str(device).startswith("cuda") if device is not None else torch.cuda.is_initialized()
    faiss = sys.modules.get("faiss")
    return {
        **git_state(),
        "command": command_line(argv),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name(device) if cuda else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "faiss_threads": faiss.omp_get_max_threads() if faiss is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "skuld": _version("skuld"),
    }


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder (created if
    needed) and ``os.replace``, so that the file is either the old one or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named by the process id, not by tempfile.mkstemp: that one creates the file readable by
    # its owner only, and results are files to share.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(out, payload: dict, meta: dict | None = None, indent: int | None = 1) -> Path:
    """Write ``out``.json: ``{"meta": meta, **payload}``.

    Parameters
    ----------
    out : str or Path
        The results path without its suffix (``benchmarks/results/landmarks``).
    payload : dict
        The script's own results, as it names them; it must not use the key ``"meta"``.
    meta : dict, optional
        The run's metadata block (default: :func:`run_metadata` now). A script that shows
        some of it in its table makes it first and passes it to both.
    indent : int or None
        ``json.dumps`` indentation (None: one line, for large curves).
    """
    if "meta" in payload:
        raise ValueError("the payload's key 'meta' is the metadata block's")
    text = json.dumps({"meta": run_metadata() if meta is None else meta, **payload}, indent=indent)
    return atomic_write_text(Path(out).with_suffix(".json"), text)


def write_markdown(out, markdown) -> Path:
    """Write ``out``.md: ``markdown`` as it is (a str) or its lines joined, ending in a newline."""
    text = markdown if isinstance(markdown, str) else "\n".join(markdown) + "\n"
    return atomic_write_text(Path(out).with_suffix(".md"), text)


def write_results(out, payload: dict, markdown, meta: dict | None = None, indent: int | None = 1) -> dict:
    """Write ``out``.json (:func:`write_json`) and ``out``.md (:func:`write_markdown`), then print
    the Markdown. Returns the metadata block written."""
    meta = run_metadata() if meta is None else meta
    write_json(out, payload, meta, indent=indent)
    write_markdown(out, markdown)
    print(markdown if isinstance(markdown, str) else "\n".join(markdown), flush=True)
    return meta
