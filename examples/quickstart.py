"""Pretrain on your own folder of images and look at what was learned.

    python examples/quickstart.py            # the bundled chest X-rays
    python examples/quickstart.py "scans/*.png" --max-iter 1000 --no-rotation

Writes clusters.png (each pixel coloured by its cluster) and similarity.png (cosine
similarity of every pixel to the centre pixel of the first image) into ./quickstart/.
"""

import argparse
import os

import imageio.v3 as iio
import numpy as np

from skuld import LocalDiscriminativeEncoder
from skuld.datasets import cxr_tiny_dir
from skuld.io import ImageCollection, expand_paths
from skuld.render import cluster_overlay, heatmap_overlay, mark, side_by_side

ap = argparse.ArgumentParser()
ap.add_argument("images", nargs="?", default=os.path.join(cxr_tiny_dir(), "[0-9].jpg"))
ap.add_argument("--max-iter", type=int, default=300)
ap.add_argument("--no-rotation", action="store_true", help="for images that share one orientation")
ap.add_argument("--out", default="quickstart")
args = ap.parse_args()

paths = expand_paths(args.images)
enc = LocalDiscriminativeEncoder(max_iter=args.max_iter, n_clusters=8, random_state=0, verbose=1,
                                 **({"rotation": 0.0, "rot90": False} if args.no_rotation else {}))
enc.fit(paths)

shown = paths[:4]
images = [ImageCollection([p], n_channels=enc.n_channels_in_)[0] for p in shown]
E = enc.transform(shown)  # list of (H, W, 32) unit vectors
labels = enc.predict(shown)  # list of (H, W) cluster labels
h = min(img.shape[0] for img in images)  # crop panels to a common height for the strip

os.makedirs(args.out, exist_ok=True)
iio.imwrite(os.path.join(args.out, "clusters.png"),
            side_by_side([cluster_overlay(img, lab)[:h] for img, lab in zip(images, labels)]))
r, c = images[0].shape[0] // 2, images[0].shape[1] // 2
query = E[0][r, c]
sims = [e @ query for e in E]
panels = [heatmap_overlay(img, s, vmin=-1, vmax=1)[:h] for img, s in zip(images, sims)]
panels[0] = mark(panels[0], r, c, radius=10)
iio.imwrite(os.path.join(args.out, "similarity.png"), side_by_side(panels))
print("cluster coverage:", np.round(np.bincount(np.concatenate([l.ravel() for l in labels]), minlength=8) / sum(l.size for l in labels), 3))
print(f"wrote {args.out}/clusters.png and {args.out}/similarity.png")
