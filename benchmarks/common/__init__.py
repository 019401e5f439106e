"""What the benchmark scripts share: the results writer (:mod:`benchmarks.common.results`),
where the data is and how it is read (:mod:`benchmarks.common.data`), and the one-shot
landmark helpers (:mod:`benchmarks.common.landmarks`)."""

from __future__ import annotations

from pathlib import Path

#: The repository root: the folder that holds ``benchmarks/`` and ``skuld/``.
ROOT = Path(__file__).resolve().parents[2]


def shape_guided_segmenter(**params):
    """A ``ShapeGuidedSegmenter`` from one flat dict of its own and its encoder's parameters (what
    the shape-guided results record): the encoder's go into ``ShapeGuidedSegmenter.default_encoder``."""
    from skuld import ShapeGuidedSegmenter

    own = {k for k, v in ShapeGuidedSegmenter().get_params(deep=False).items() if v != "deprecated"}
    encoder = {k: params.pop(k) for k in list(params) if k not in own}
    encoder.update(encoder.pop("encoder_params", None) or {})
    return ShapeGuidedSegmenter(ShapeGuidedSegmenter.default_encoder(**encoder), **params)
