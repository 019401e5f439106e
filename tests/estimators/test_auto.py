"""Every "auto" default of every estimator is resolved by a rule of skuld.estimators.auto."""

import inspect

import pytest
import torch

import skuld
from skuld.estimators import auto

ESTIMATORS = [getattr(skuld, n) for n in skuld.__all__ if inspect.isclass(getattr(skuld, n))
              and hasattr(getattr(skuld, n), "get_params")]


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_every_auto_default_has_its_rule(cls):
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if param.default == "auto":
            assert (cls.__name__, name) in auto.RULES or name in auto.SHARED_RULES, f"{cls.__name__}.{name}"


def test_the_rules_say_what_their_docs_say():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert (auto.crop_size(cpu), auto.crop_size(gpu), auto.image_size(cpu), auto.image_size(gpu)) == (160, 448, 256, 512)
    assert auto.compile_network(gpu, 500) and not auto.compile_network(gpu, 499) and not auto.compile_network(cpu, 900)
    assert auto.native_crop_scale(512, 256) == (0.8, 1.0) and auto.native_crop_scale(64, None) == (0.9, 1.0)
    assert auto.pseudo_label_route([12.0, 11.0], 0, "frame") == "ridge"
    assert auto.pseudo_label_route([30.0], 0, 8.0) == "ld" and auto.pseudo_label_route([30.0], 30, "frame") == "ld"
    assert auto.test_time_views(90) == "dihedral" and auto.test_time_views(45) is None
