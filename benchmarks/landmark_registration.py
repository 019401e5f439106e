"""Does a dense image registration, a correspondence that owes nothing to the locator's
patch matching, carry the template's landmarks closer than OneShotLandmarkLocator?

The locator's largest errors are consistent offsets (gonion 44 px of its 52 px,
`benchmarks/results/landmark_errors.md`). If they came from the patch matching, a different
way of putting the two images in correspondence would not share them. Here the template
(image 001) is registered to each evaluated image: an affine map fitted to the locator's
predicted landmarks (porion left out: it does not move with the skull) is refined by a smooth
displacement field (bicubic interpolation of a control grid, 8 then 16 columns, at 1/8 then
1/4 of the resolution) that maximises the local normalised cross-correlation of the two
images, with a penalty on the field's roughness; the template's landmarks go through the
map. Rows: the locator (defaults, random_state 0), the affine map alone, the registration,
and the mean of the registration and the locator.

A prototype, not part of skuld: several seconds per image on 2 cores.

    python -m benchmarks.landmark_registration [--encoder enc.joblib] [--images 20]

Writes ``benchmarks/results/landmark_registration.{json,md}``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common.data import ceph_files, load_truth
from benchmarks.common.landmarks import ENC_NOTE, PORION, fit_and_predict, landmark_parser, locator_encoder
from benchmarks.common.results import run_metadata, write_results
from skuld.io import read_image

#: (downsampling factor, control-grid columns, Adam steps) per level, coarse to fine.
LEVELS = ((8, 8, 150), (4, 16, 150))


def gray_tensor(img: np.ndarray) -> torch.Tensor:
    """(1, 1, H, W) float tensor in [0, 1] of an 8-bit (H, W) or (H, W, C) image."""
    img = img.astype(np.float32) / 255
    if img.ndim == 3:
        img = img.mean(axis=-1)
    return torch.from_numpy(img)[None, None]


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int) -> torch.Tensor:
    """Normalised cross-correlation of ``a`` and ``b`` in a ``window``-pixel box around every pixel."""
    def mean(t):
        return F.avg_pool2d(t, window, 1, window // 2, count_include_pad=False)
    mu_a, mu_b = mean(a), mean(b)
    var_a, var_b = mean(a * a) - mu_a**2, mean(b * b) - mu_b**2
    return (mean(a * b) - mu_a * mu_b) / torch.sqrt(var_a.clamp_min(1e-5) * var_b.clamp_min(1e-5))


def affine_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(3, 2) least-squares affine map of (x, y) points: ``[x, y, 1] @ M``."""
    return np.linalg.lstsq(np.c_[src, np.ones(len(src))], dst, rcond=None)[0]


def register(template, query, affine, points, smoothness=0.005, window=15, step=0.1):
    """Map ``points`` ((L, 2) (x, y) template pixels) into the query: the affine map plus a
    smooth displacement field fitted by local NCC, coarse to fine (``LEVELS``). ``step`` is
    Adam's learning rate in full-resolution pixels per unit of downsampling."""
    height, width = template.shape[-2:]
    qh, qw = query.shape[-2:]
    m = torch.from_numpy(affine).float()
    field = None
    for factor, columns, steps in LEVELS:
        t_low = F.avg_pool2d(template, factor)
        h, w = t_low.shape[-2:]
        centres = [torch.arange(n, dtype=torch.float32) * factor + (factor - 1) / 2 for n in (h, w)]
        ys, xs = torch.meshgrid(*centres, indexing="ij")
        base = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ m
        rows = max(3, round(columns * height / width))
        if field is None:
            ctrl = torch.zeros(1, 2, rows, columns)
        else:
            ctrl = F.interpolate(field, size=(rows, columns), mode="bicubic", align_corners=True)
        ctrl.requires_grad_(True)
        opt = torch.optim.Adam([ctrl], lr=step * factor)
        for _ in range(steps):
            disp = F.interpolate(ctrl, size=(h, w), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)
            where = base + disp
            grid = torch.stack([2 * where[..., 0] / (qw - 1) - 1, 2 * where[..., 1] / (qh - 1) - 1], -1)[None]
            warped = F.grid_sample(query, grid, align_corners=True, padding_mode="border")
            rough = ((ctrl[..., 1:] - ctrl[..., :-1]) ** 2).mean() + ((ctrl[..., 1:, :] - ctrl[..., :-1, :]) ** 2).mean()
            loss = -local_ncc(t_low, warped, window).mean() + smoothness * rough / factor**2
            opt.zero_grad()
            loss.backward()
            opt.step()
        field = ctrl.detach()
    pts = torch.from_numpy(points).float()
    mapped = torch.cat([pts, torch.ones(len(pts), 1)], 1) @ m
    grid = torch.stack([2 * pts[:, 0] / (width - 1) - 1, 2 * pts[:, 1] / (height - 1) - 1], -1)[None, None]
    return (mapped + F.grid_sample(field, grid, align_corners=True)[0, :, 0].T).numpy()


def main():
    ap = landmark_parser(__doc__, "landmark_registration")
    ap.add_argument("--images", type=int, default=20, help="evaluate on images 002 .. 002 + N - 1")
    args = ap.parse_args()
    files = ceph_files()
    truth = load_truth("mollabashi")
    encoder = locator_encoder(files, args.encoder)
    idx = list(range(1, 1 + args.images))
    images = [read_image(files[i]) for i in idx]
    _, located, _ = fit_and_predict(encoder, files, truth[0], images, random_state=0)
    moving = np.array([j for j in range(truth.shape[1]) if j != PORION])
    template = gray_tensor(read_image(files[0]))
    rows = {"locator (defaults, random_state 0)": located, "affine map of the locator's landmarks": [],
            "registration": [], "mean of registration and locator": []}
    start = time.perf_counter()
    for k, i in enumerate(idx):
        affine = affine_fit(truth[0][moving], located[k][moving])
        mapped = register(template, gray_tensor(images[k]), affine, truth[0])
        rows["affine map of the locator's landmarks"].append(np.c_[truth[0], np.ones(len(truth[0]))] @ affine)
        rows["registration"].append(mapped)
        rows["mean of registration and locator"].append((mapped + located[k]) / 2)
        print(f"image {i + 1:03d}: registration {np.nanmean(np.linalg.norm(mapped - truth[i], axis=1)):.1f} px, "
              f"locator {np.nanmean(np.linalg.norm(located[k] - truth[i], axis=1)):.1f} px", flush=True)
    seconds = (time.perf_counter() - start) / len(idx)
    errors = {n: np.linalg.norm(np.asarray(p) - truth[idx], axis=-1) for n, p in rows.items()}
    result = {"levels": LEVELS, "registration_seconds_per_image": seconds,
              "rows": {n: {"mre": float(np.nanmean(e)), "per_landmark": np.nanmean(e, axis=0).round(2).tolist()}
                       for n, e in errors.items()}}
    meta = run_metadata()
    command = ("python -m benchmarks.landmark_registration" + (" --encoder ENC" if args.encoder else "")
               + f" --images {args.images}")
    md = ["# One-shot landmarks by dense registration (cephalograms, px)", "",
          f"`{command}`" + (ENC_NOTE if args.encoder else "")
          + f": template 001, images 002-{1 + args.images:03d}, mollabashi truth, {meta['torch_threads']} CPU threads; "
          f"registration {seconds:.1f} s per image.", "",
          "| landmark | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows),
          "| all | " + " | ".join(f"**{np.nanmean(e):.1f}**" for e in errors.values()) + " |"]
    for j in range(truth.shape[1]):
        md.append(f"| {j + 1} | " + " | ".join(f"{np.nanmean(e[:, j]):.0f}" for e in errors.values()) + " |")
    write_results(args.out, result, md, meta)


if __name__ == "__main__":
    main()
