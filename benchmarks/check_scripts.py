"""Check that every benchmark imports and parses its arguments, without running any.

Each script (a module of ``benchmarks/`` with a ``__main__`` block) is run as
``python -m benchmarks.<name> --help`` in a fresh process and must exit 0; the other modules
(``benchmarks.naive_ld`` and ``benchmarks.common.*``, imported by scripts and tests) must
import. A failure whose last line is an ImportError raised from skuld is reported as such:
skuld's modules are reorganised now and then, and the benchmarks follow.

    python -m benchmarks.check_scripts [names ...]

Exits 1 when any fails. Takes a few seconds per script (each imports torch and skuld).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from benchmarks.common import ROOT

BENCHMARKS = ROOT / "benchmarks"
_SKULD_IMPORT = re.compile(r"^(ModuleNotFoundError|ImportError): .*\bskuld\b")


def modules() -> dict[str, bool]:
    """Every module under ``benchmarks/`` by dotted name, True for a script (it has a ``__main__`` block)."""
    out = {}
    for path in sorted(BENCHMARKS.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        # Not the measurements' folders (no code there), nor this check itself.
        if path.name == "__init__.py" or rel.parts[1] in ("results", "cache") or rel.parts[-1] == "check_scripts":
            continue
        out[".".join(rel.parts)] = 'if __name__ == "__main__":' in path.read_text()
    return out


def check(name: str, script: bool) -> tuple[str, float, str]:
    """Run one check: ``("ok" | "skuld import" | "failed", seconds, last stderr line)``."""
    cmd = [sys.executable, "-m", name, "--help"] if script else [sys.executable, "-c", f"import {name}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    if proc.returncode == 0:
        return "ok", seconds, ""
    return ("skuld import" if _SKULD_IMPORT.match(last) else "failed"), seconds, last


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="modules to check, as benchmarks.<name> or <name> (default: all)")
    args = ap.parse_args(argv)
    found = modules()
    wanted = [n if n.startswith("benchmarks.") else f"benchmarks.{n}" for n in args.names] or list(found)
    unknown = [n for n in wanted if n not in found]
    if unknown:
        ap.error(f"no such module: {', '.join(unknown)}")
    failures = 0
    for name in wanted:
        status, seconds, last = check(name, found[name])
        how = "--help" if found[name] else "import"
        print(f"{status:12s} {how:6s} {name:40s} {seconds:5.1f} s  {last}", flush=True)
        failures += status != "ok"
    print(f"{len(wanted) - failures} of {len(wanted)} ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
