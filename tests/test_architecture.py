"""The structure docs/architecture.md describes, held by the numbers of tools/architecture_report.py."""

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "architecture_report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("architecture_report", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.report(with_duplicates=False)  # the duplicates tool is not on every machine


def test_layers_only_point_down(report):
    assert report["upward_imports"] == []


def test_backward_is_called_in_the_engine_only(report):
    assert report["backward_calls"] and all(c.startswith("skuld.engine.") for c in report["backward_calls"])


def test_estimators_are_thin(report):
    assert report["largest_estimator_code_lines"] <= 220, report["estimator_code_lines"]


def test_no_object_reaches_into_another_skulds_private_state(report):
    # The one write left is torch's: nn.Module.compile() has no public way back.
    writes = [p for p in report["private_access_across_objects"] if " write " in p]
    assert writes == [w for w in writes if w.endswith("m._compiled_call_impl")] and len(writes) <= 1


def test_fewer_constructor_parameters_than_before_the_engine(report):
    assert report["constructor_parameters_not_deprecated"] < 124
