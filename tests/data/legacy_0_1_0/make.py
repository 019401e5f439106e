"""Fitted estimators pickled by skuld 0.1.0 (commit 3926aa3), and their outputs, for the
compatibility test. Run with PYTHONPATH pointing at a checkout of that commit."""
import sys
import warnings

import joblib
import numpy as np
import torch

sys.path.insert(0, sys.argv[1])
import skuld

assert skuld.__file__.startswith(sys.argv[1]), skuld.__file__
from sklearn.frozen import FrozenEstimator

from skuld import (
    LocalDiscriminativeEncoder,
    OneShotLandmarkLocator,
    PixelIndex,
    ShapeGuidedSegmenter,
    TransferSegmenter,
)

out = sys.argv[2]
torch.set_num_threads(1)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:48, 0:48] / 48
X = np.stack([np.exp(-((yy - 0.3 - 0.1 * i) ** 2 + (xx - 0.5) ** 2) / 0.02) * 0.8 + 0.1 * rng.random((48, 48))
              for i in range(3)]).astype(np.float32)
tiny = dict(max_iter=2, batch_size=1, crop_size=32, image_size=48, patch_grid=4, width=0.125, embedding_dim=4,
            n_clusters=3, rotation=0.0, rot90=False, precision="fp32", random_state=0)
enc = LocalDiscriminativeEncoder(**tiny).fit(X)
seg = TransferSegmenter(encoder=FrozenEstimator(enc), max_iter=2, batch_size=1, crop_size=32, precision="fp32",
                        random_state=0).fit(X, X > 0.5)
marks = np.array([[24.0, 14.0], [20.0, 30.0], [30.0, 30.0]])
loc = OneShotLandmarkLocator(encoder=FrozenEstimator(enc), refine_patch=9, refine_radius=3, prior_weight=0.5,
                             correspondence_steps=0, n_pseudo_templates=0).fit(X[0], marks)
index = PixelIndex(index="Flat", stride=4).fit(enc.transform(X))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    sg = ShapeGuidedSegmenter(max_iter=2, refine_iter=2, batch_size=1, crop_size=32, image_size=48, rotation=0.0,
                              precision="fp32", encoder_params=dict(width=0.125, embedding_dim=4, patch_grid=4),
                              random_state=0).fit(X, [X[0] > 0.5, X[1] > 0.5])
for name, est in dict(encoder=enc, segmenter=seg, locator=loc, index=index, shape_guided=sg).items():
    joblib.dump(est, f"{out}/{name}.joblib", compress=3)
np.savez_compressed(f"{out}/outputs.npz", X=X, E=enc.transform(X[:1]), P=seg.predict_proba(X[:1]),
                    L=loc.predict(X[1:2]), D=index.kneighbors(enc.transform(X[:1])[0, 4, 4], k=3)[0],
                    W=index.kneighbors(enc.transform(X[:1])[0, 4, 4], k=3)[1], S=sg.predict_proba(X[:1]))
print("ok")
