"""Every public object is documented in numpydoc style with an example, and the examples run.

"Public" is what the API reference (docs/api.md) renders: the estimators exported by
``skuld`` and the modules listed there. The examples are executed as doctests, so they
cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import re
from pathlib import Path

import pytest

import skuld

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _documented_targets() -> list[str]:
    return re.findall(r"^::: (\S+)", API_PAGE.read_text(), flags=re.M)


def _resolve(target: str):
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError:
        module, _, name = target.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _public_objects() -> dict[str, object]:
    """Qualified name -> class or function, for everything the API page renders."""
    found: dict[str, object] = {}
    for target in _documented_targets():
        obj = _resolve(target)
        if inspect.ismodule(obj):
            names = getattr(obj, "__all__", None) or [
                n for n, o in vars(obj).items()
                if not n.startswith("_") and (inspect.isclass(o) or inspect.isfunction(o))
                and o.__module__ == obj.__name__
            ]
            for n in names:
                member = getattr(obj, n)
                if inspect.isclass(member) or inspect.isfunction(member):  # constants: documented by #: comments
                    found[f"{obj.__name__}.{n}"] = member
        else:
            found[target] = obj
    return found


PUBLIC = _public_objects()


def test_api_page_lists_every_public_module():
    targets = set(_documented_targets())
    for name in ("skuld.metrics", "skuld.matching", "skuld.io", "skuld.preprocessing", "skuld.inference", "skuld.engine",
                 "skuld.pretraining", "skuld.landmarks", "skuld.segmentation", "skuld.retrieval", "skuld.plotting",
                 "skuld.datasets", "skuld.estimators.auto"):
        assert name in targets, f"{name} is public but missing from docs/api.md"
    for name in skuld.__all__:
        if name != "__version__":
            assert f"skuld.{name}" in targets, f"skuld.{name} is exported but missing from docs/api.md"


def _has_parameters(obj) -> bool:
    target = obj.__init__ if inspect.isclass(obj) else obj
    if not getattr(target, "__module__", "").startswith("skuld"):
        return False  # a constructor inherited from torch or the standard library documents itself
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return any(p not in ("self", "args", "kwargs") for p in params)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_numpydoc_sections(name):
    obj = PUBLIC[name]
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    missing = [] if re.search(r"^Examples\n-{8}", doc, flags=re.M) else ["Examples"]
    # A dataclass documents its fields as Attributes (numpydoc's convention).
    fields = "(Parameters|Attributes)" if dataclasses.is_dataclass(obj) else "Parameters"
    if _has_parameters(obj) and not re.search(rf"^{fields}\n-{{10}}", doc, flags=re.M):
        missing.append("Parameters")
    if inspect.isfunction(obj) and inspect.signature(obj).return_annotation not in (None, "None"):
        if not re.search(r"^(Returns\n-{7}|Yields\n-{6})", doc, flags=re.M):
            missing.append("Returns")
    assert not missing, f"{name}: docstring lacks numpydoc section(s) {missing}"


def _modules_with_examples() -> list[str]:
    return sorted({getattr(o, "__module__", None) or n for n, o in PUBLIC.items()})


@pytest.mark.parametrize("module", _modules_with_examples())
def test_examples_run(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    if module == "skuld.plotting":
        matplotlib = pytest.importorskip("matplotlib")
        matplotlib.use("Agg")
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(mod, module):
        runner.run(test)
    result = runner.summarize(verbose=False)
    if module == "skuld.plotting":
        import matplotlib.pyplot as plt

        plt.close("all")
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {module} failed (output above)"


ESTIMATOR_METHODS = sorted(
    f"{cls_name}.{name}"
    for cls_name in skuld.__all__ if cls_name != "__version__"
    for name, member in vars(getattr(skuld, cls_name)).items()
    if not name.startswith("_") and inspect.isfunction(member)
)


@pytest.mark.parametrize("qualname", ESTIMATOR_METHODS)
def test_estimator_methods_document_parameters_and_returns(qualname):
    cls_name, name = qualname.split(".")
    method = getattr(getattr(skuld, cls_name), name)
    doc = inspect.getdoc(method) or ""
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    assert not params or re.search(r"^Parameters\n-{10}", doc, flags=re.M), f"{qualname}: no Parameters section"
    assert re.search(r"^(Returns\n-{7}|Yields\n-{6})", doc, flags=re.M), f"{qualname}: no Returns section"
