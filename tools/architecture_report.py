"""How skuld's structure measures up: estimator size, where backward() is called, layering,
private reach across objects, constructor parameters, repeated code.

Usage::

    python tools/architecture_report.py            # a table; exit 1 when a target is missed
    python tools/architecture_report.py --json     # the same as JSON

Targets (docs/architecture.md): estimator classes of at most 220 code lines (docstrings,
comments and blank lines aside), backward() only in skuld.engine, no import of a higher layer,
no write to another skuld object's private attributes, fewer constructor parameters than the
124 of the design before the engine, at most 12 `duplicates` pairs in code (the tool is run on
the tree as it is and on a copy with docstrings blanked: numpydoc sections repeat their shape).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import re
import subprocess
import sys
import tempfile
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "skuld"

#: Layer of each top-level module or package of skuld; an import may only point to a layer
#: at or below its own (same-layer imports between different packages are listed apart).
LAYERS = {
    "io": 0, "dicom": 0, "matching": 0, "metrics": 0, "distributed": 0, "render": 0, "datasets": 0,
    "nn": 1,
    "preprocessing": 2, "engine": 2,
    "inference": 3, "pretraining": 3, "landmarks": 3, "segmentation": 3, "retrieval": 3,
    "estimators": 4,
    "cli": 5, "demo": 5, "plotting": 5, "__init__": 5, "__main__": 5,
}
TARGETS = {"largest_estimator_code_lines": 220, "duplicate_pairs": 12, "constructor_parameters_before": 124}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        yield path, ".".join(("skuld",) + rel.with_suffix("").parts)


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def code_lines(source: str, node: ast.AST) -> int:
    """Lines of ``node`` that hold code: not blank, not comments, not docstrings."""
    lines = set(range(node.lineno, node.end_lineno + 1))
    for sub in ast.walk(node):
        body = getattr(sub, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            lines -= set(range(body[0].lineno, body[0].end_lineno + 1))
    with_code = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
            with_code.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines & with_code)


def _duplicate_pairs(folder: Path) -> int | None:
    """Pairs the ``duplicates`` tool finds below ``folder`` (None where the tool is not installed)."""
    try:
        out = subprocess.run(["duplicates", "--repo", str(folder), "--seconds", "60"], capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"(\d+) pairs", out)
    return int(match.group(1)) if match else 0


def _without_docstrings(tmp: Path) -> Path:
    """A copy of the project's Python files with every docstring blanked (line numbers kept): the
    numpydoc sections every public function must have (Parameters, Returns, Examples) repeat
    their shape everywhere, which is not repeated code."""
    for folder in ("skuld", "tests", "benchmarks", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                body = getattr(node, "body", None)
                if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                        getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
                    for i in range(body[0].lineno - 1, body[0].end_lineno):
                        lines[i] = ""
            target = tmp / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(lines) + "\n")
    return tmp


def report(with_duplicates: bool = True) -> dict:
    sys.path.insert(0, str(ROOT))
    import skuld

    estimators = {name: getattr(skuld, name) for name in skuld.__all__
                  if inspect.isclass(getattr(skuld, name)) and hasattr(getattr(skuld, name), "get_params")}
    sizes, backward, upward, sideways, private = {}, [], [], [], []
    for path, module in _modules():
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in estimators:
                sizes[node.name] = code_lines(source, node)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward":
                backward.append(f"{module}:{node.lineno}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    _resolve(module, node, path.name == "__init__.py")]
                for target in targets:
                    if not target or not target.startswith("skuld.") or _top(target) not in LAYERS:
                        continue
                    src, dst = _top(module), _top(target)
                    if LAYERS[dst] > LAYERS[src]:
                        upward.append(f"{module}:{node.lineno} imports {target}")
                    elif LAYERS[dst] == LAYERS[src] and dst != src:
                        sideways.append(f"{module}:{node.lineno} imports {target}")
            # obj._name = ... / obj._name(...) where obj is not self, cls or super(): reaching into
            # another object's private state.
            if isinstance(node, ast.Attribute) and re.match(r"_[a-z]", node.attr) and not node.attr.startswith("__"):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                    continue
                if isinstance(owner, ast.Name) and owner.id in ("torch", "np", "os", "sys", "faiss", "_faiss"):
                    continue  # a library's module-level private helper, not an object's state
                kind = "write" if isinstance(node.ctx, ast.Store) else "read/call"
                private.append(f"{module}:{node.lineno} {kind} {ast.unparse(node)}")
    params = {name: [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
              for name, cls in estimators.items()}
    deprecated = {name: [p for p in names if inspect.signature(estimators[name].__init__).parameters[p].default
                         == "deprecated"] for name, names in params.items()}
    duplicates = code_duplicates = None
    if with_duplicates:
        duplicates = _duplicate_pairs(ROOT)
        with tempfile.TemporaryDirectory() as tmp:
            code_duplicates = _duplicate_pairs(_without_docstrings(Path(tmp)))
    return {
        "estimator_code_lines": sizes,
        "largest_estimator_code_lines": max(sizes.values()),
        "backward_calls": backward,
        "upward_imports": upward,
        "sideways_imports": sideways,
        "private_access_across_objects": private,
        "constructor_parameters": {k: len(v) for k, v in params.items()},
        "constructor_parameters_total": sum(len(v) for v in params.values()),
        "deprecated_parameters": {k: v for k, v in deprecated.items() if v},
        "constructor_parameters_not_deprecated": sum(len(v) - len(deprecated[k]) for k, v in params.items()),
        "duplicate_pairs": duplicates,
        "duplicate_pairs_in_code": code_duplicates,
    }


def misses(r: dict) -> list[str]:
    out = []
    if r["largest_estimator_code_lines"] > TARGETS["largest_estimator_code_lines"]:
        out.append(f"an estimator has {r['largest_estimator_code_lines']} code lines (target <= 220)")
    if any(not c.startswith("skuld.engine") for c in r["backward_calls"]):
        out.append("backward() is called outside skuld.engine")
    if r["upward_imports"]:
        out.append(f"{len(r['upward_imports'])} upward imports")
    if [p for p in r["private_access_across_objects"] if " write " in p and "_compiled_call_impl" not in p]:
        out.append("private attributes of other objects are written")
    if r["constructor_parameters_not_deprecated"] >= TARGETS["constructor_parameters_before"]:
        out.append("no fewer constructor parameters than before")
    if r["duplicate_pairs_in_code"] is not None and r["duplicate_pairs_in_code"] > TARGETS["duplicate_pairs"]:
        out.append(f"{r['duplicate_pairs_in_code']} duplicate pairs in code (target <= 12)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    r = report()
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print("| measure | value | target |\n|---|---|---|")
        print(f"| largest estimator class, code lines | {r['largest_estimator_code_lines']} "
              f"({', '.join(f'{k} {v}' for k, v in sorted(r['estimator_code_lines'].items()))}) | <= 220 |")
        print(f"| modules calling backward() | {sorted({c.rsplit(':', 1)[0] for c in r['backward_calls']})} "
              "| skuld.engine only |")
        print(f"| upward imports | {len(r['upward_imports'])} | 0 |")
        print(f"| private attributes of other objects written / read or called | "
              f"{sum(' write ' in p for p in r['private_access_across_objects'])} / "
              f"{sum(' read/call ' in p for p in r['private_access_across_objects'])} | 0 writes |")
        print(f"| constructor parameters (not deprecated / all) | {r['constructor_parameters_not_deprecated']} / "
              f"{r['constructor_parameters_total']} | < 124 |")
        print(f"| duplicates pairs: in code (docstrings blanked) / with docstrings | {r['duplicate_pairs_in_code']} / "
              f"{r['duplicate_pairs']} | <= 12 in code |")
        for key in ("upward_imports", "private_access_across_objects", "sideways_imports"):
            if r[key]:
                print(f"\n{key}:\n  " + "\n  ".join(r[key]))
        if r["deprecated_parameters"]:
            print(f"\ndeprecated (removed in the next release): {r['deprecated_parameters']}")
    problems = misses(r)
    for p in problems:
        print(f"MISSED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
