"""What models pickled by skuld 0.1.0 need to load: where their classes were, how their state was.

All of it is here so that it goes in one piece when 0.1.0's models stop being read (the next
release). ``import skuld`` registers the old module paths, and :func:`upgrade` brings a pickled
state to this version's before :meth:`SkuldEstimator.__setstate__` uses it.
"""

from __future__ import annotations

import sys

from ..preprocessing import InputSpec


def register_old_module_paths(modules: dict) -> None:
    """Make ``joblib.load`` find classes under the module paths skuld 0.1.0 pickled them with.

    Parameters
    ----------
    modules : dict
        Old module name -> the module that defines its classes now.

    Returns
    -------
    None

    Examples
    --------
    >>> import sys
    >>> import skuld
    >>> sys.modules["skuld.encoder"].LocalDiscriminativeEncoder is skuld.LocalDiscriminativeEncoder
    True
    """
    for name, module in modules.items():
        sys.modules.setdefault(name, module)


def module_payload(name: str, payload: dict | None) -> dict | None:
    """A pickled torch-module payload as this version writes it: 0.1.0 wrote no "type", and a
    segmenter's constructor arguments beside its state dict.

    Parameters
    ----------
    name : str
        The fitted attribute ("model_" or "net_").
    payload : dict or None

    Returns
    -------
    dict or None
        With "type", "config" and "state_dict".

    Examples
    --------
    >>> from skuld.estimators.legacy import module_payload
    >>> module_payload("net_", {"n_classes": 2, "in_channels": 1, "width": 1.0, "state_dict": {}})["config"]
    {'n_classes': 2, 'in_channels': 1, 'width': 1.0}
    """
    if payload is None or "type" in payload:
        return payload
    if name == "net_":
        payload = dict(payload)
        sd = payload.pop("state_dict")
        return {"type": "SegmentationUNet", "config": payload, "state_dict": sd}
    return {"type": "LDNet", **payload}


def upgrade(estimator: str, state: dict) -> None:
    """Bring the pickled ``state`` of an ``estimator`` (class name) of 0.1.0 to this version's, in place.

    Parameters
    ----------
    estimator : str
    state : dict

    Returns
    -------
    None

    Examples
    --------
    >>> from skuld.estimators.legacy import upgrade
    >>> state = {"prior_weight": 0.5, "encoder_params": None}
    >>> upgrade("OneShotLandmarkLocator", state); sorted(state.items())
    [('coarse_weight', 0.5), ('encoder_params', 'deprecated'), ('prior_weight', 'deprecated')]
    """
    fitted = "n_channels_in_" in state and "input_spec_" not in state
    if estimator == "LocalDiscriminativeEncoder" and fitted:
        state.setdefault("crop_size_", 160 if state.get("crop_size") == "auto" else state.get("crop_size"))
        state.setdefault("image_size_", 256 if state.get("image_size") == "auto" else state.get("image_size"))
        state["input_spec_"] = InputSpec.from_params(state["n_channels_in_"], state["image_size_"],
                                                     state.get("normalization", "auto"))
    elif estimator == "TransferSegmenter" and fitted:
        state["input_spec_"] = InputSpec(state["n_channels_in_"], state["image_size_"], tuple(state.pop("_mean")),
                                         tuple(state.pop("_std")))
    elif estimator == "ShapeGuidedSegmenter":
        state.setdefault("test_time_augmentation", None)  # saved before the parameter existed: one view
    elif estimator == "OneShotLandmarkLocator" and "coarse_weight" not in state:
        state["coarse_weight"] = state.pop("prior_weight", 1.0)  # 0.1.0's prior_weight was the coarse weight
        state["prior_weight"] = "deprecated"
        if state.get("encoder_params") is None:
            state["encoder_params"] = "deprecated"
    elif estimator == "PixelIndex" and "_id_arrays" in state:
        state["ids_"] = state.pop("_id_arrays")
        state.pop("_offsets", None)
        state.setdefault("embedding_model_", None)
