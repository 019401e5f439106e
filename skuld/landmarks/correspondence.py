"""Cross-image correspondence fine-tuning: the same anatomy in two patients should look alike.

Patch and region discrimination (the encoder's pretraining) make every image's patches
negatives of each other, including the same anatomy in two patients: the opposite of what
landmark matching needs. Given landmarks in a set of images (a labelled template and the
pseudo landmarks the locator found in unlabelled images), a thin-plate spline through each
pair's landmarks maps any point of one image to its likely counterpart in the other; a
contrastive loss then pulls the encoder's smoothed descriptors of such pairs together and
pushes the other sampled points away. Noisy pseudo landmarks are tolerable: each pair's
spline is smooth and every image is paired with many others.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.interpolate import RBFInterpolator
from sklearn.utils import check_random_state
from torch.nn import functional as F

from .. import matching
from ..engine import EngineConfig, Step, Task, TrainingState, resolve_device, train
from ..preprocessing import pad_to_multiple, resize, to_tensor
from .features import encoder_descriptor_maps, sample_descriptors


def thin_plate_spline(src, dst, smoothing: float = 1.0):
    """The thin-plate spline that maps points ``src`` onto ``dst``.

    Parameters
    ----------
    src, dst : array-like of shape (L, 2)
        Corresponding ``(x, y)`` points, L >= 3 and not all on one line.
    smoothing : float, default=1.0
        0 interpolates exactly; larger values let the spline miss the points (in squared
        pixels) to stay smoother, which tolerates noisy points.

    Returns
    -------
    callable
        Maps an ``(N, 2)`` float array of ``(x, y)`` points to their ``(N, 2)`` images.
        Affine maps are reproduced exactly.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.landmarks import thin_plate_spline
    >>> src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    >>> warp = thin_plate_spline(src, 2 * src + 5, smoothing=0.0)
    >>> np.round(warp(np.array([[5.0, 5.0]])), 6)
    array([[15., 15.]])
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    return RBFInterpolator(src, dst, kernel="thin_plate_spline", smoothing=smoothing, degree=1)


def correspondence_loss(desc_a: torch.Tensor, desc_b: torch.Tensor, points_b, temperature: float = 0.1,
                        exclusion: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE over point correspondences between two images.

    Row i of ``desc_a`` and row i of ``desc_b`` describe corresponding points (positives);
    every other row of the other image is a negative, except the points closer than
    ``exclusion`` pixels to the positive (near-duplicates under smoothed descriptors).

    Parameters
    ----------
    desc_a, desc_b : Tensor of shape (N, C)
        Unit-norm descriptors of N corresponding points in image A and image B.
    points_b : array-like of shape (N, 2)
        ``(x, y)`` of the points in image B (pixels of the descriptor maps).
    temperature : float, default=0.1
    exclusion : float, default=0.0
        Radius in pixels of B within which a point is not used as a negative.

    Returns
    -------
    Tensor
        Scalar loss, at least 0 and at most ``log N + 2 / temperature``.

    Examples
    --------
    >>> import torch
    >>> from skuld.landmarks import correspondence_loss
    >>> d = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    >>> float(correspondence_loss(d, d, torch.arange(16.0).view(8, 2) * 10)) < float(
    ...     correspondence_loss(d, d.roll(1, 0), torch.arange(16.0).view(8, 2) * 10))
    True
    """
    pb = torch.as_tensor(np.asarray(points_b, dtype=np.float32))
    logits = desc_a @ desc_b.T / temperature
    if exclusion > 0:
        near = (torch.cdist(pb, pb) < exclusion) & ~torch.eye(len(pb), dtype=torch.bool)
        logits = logits.masked_fill(near.to(logits.device), float("-inf"))
    target = torch.arange(len(pb), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class CorrespondenceTask(Task):
    """Cross-image correspondence fine-tuning as an engine task (see :func:`fine_tune_correspondence`).

    Parameters
    ----------
    inputs : list of Tensor of shape (1, C, H16, W16)
        The images at working resolution, normalised and padded, on the training device.
    points : list of float arrays of shape (L, 2)
        Their landmarks at working resolution (NaN: missing).
    shapes : list of (int, int)
        Their working ``(h, w)``.
    rng : numpy Generator
        Draws the pairs and points, one step after another (its state is checkpointed).
    learning_rate : float
    levels, sigma, pairs_per_step, points_per_pair, temperature, exclusion, margin, smoothing
        As in :func:`fine_tune_correspondence`.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld.landmarks import CorrespondenceTask
    >>> task = CorrespondenceTask([], [], [], np.random.default_rng(0), 1e-4)
    >>> task.kind, task.lr(10)
    ('correspondence', 0.0001)
    """

    kind = "correspondence"
    same_size_inputs = False  # images of any sizes: cuDNN would tune again for each

    def __init__(self, inputs, points, shapes, rng: np.random.Generator, learning_rate: float, levels=(2, 3, 4),
                 sigma: float = 0.03, pairs_per_step: int = 4, points_per_pair: int = 256, temperature: float = 0.1,
                 exclusion: float = 0.04, margin: float = 0.1, smoothing: float = 1.0):
        super().__init__(learning_rate)
        self.inputs, self.points, self.shapes, self.rng = inputs, points, shapes, rng
        self.levels, self.sigma = tuple(levels), sigma
        self.pairs_per_step, self.points_per_pair = pairs_per_step, points_per_pair
        self.temperature, self.exclusion, self.margin, self.smoothing = temperature, exclusion, margin, smoothing

    def batches(self, start: int, stop: int, device: torch.device):
        yield from range(start, stop)  # the pairs are drawn in loss(), in order

    def begin_step(self, model, step: Step) -> None:
        model.eval()  # batch-norm statistics stay those of pretraining

    def loss(self, model, batch, step: Step):
        rng, n = self.rng, len(self.inputs)
        total, used = 0.0, 0
        for a in rng.choice(n, size=min(self.pairs_per_step, n), replace=False):
            b = int(rng.choice(np.delete(np.arange(n), a)))
            both = ~(np.isnan(self.points[a]).any(axis=1) | np.isnan(self.points[b]).any(axis=1))
            if both.sum() < 3:
                continue
            (ha, wa), (hb, wb) = self.shapes[a], self.shapes[b]
            pa_marks = self.points[a][both]
            widen = self.margin * min(ha, wa)
            low = np.maximum(pa_marks.min(axis=0) - widen, 0)
            high = np.minimum(pa_marks.max(axis=0) + widen, [wa - 1, ha - 1])
            pa = rng.uniform(low, high, size=(self.points_per_pair, 2))
            pb = thin_plate_spline(pa_marks, self.points[b][both], self.smoothing)(pa)
            inside = (pb[:, 0] >= 0) & (pb[:, 0] <= wb - 1) & (pb[:, 1] >= 0) & (pb[:, 1] <= hb - 1)
            if inside.sum() < 2:
                continue
            pa, pb = pa[inside], pb[inside]
            da = sample_descriptors(encoder_descriptor_maps(model, self.inputs[a], self.levels, self.sigma * min(ha, wa)), pa)
            db = sample_descriptors(encoder_descriptor_maps(model, self.inputs[b], self.levels, self.sigma * min(hb, wb)), pb)
            total = total + correspondence_loss(da, db, pb, self.temperature, self.exclusion * min(hb, wb))
            used += 1
        if not used:
            raise ValueError("no pair of images shares 3 landmarks inside both images: nothing to fine-tune on")
        return total / used, {}, {}

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]


def fine_tune_correspondence(encoder, images, landmarks, *, steps: int = 150, learning_rate: float = 1e-4,
                             levels=(2, 3, 4), sigma: float = 0.03, pairs_per_step: int = 4,
                             points_per_pair: int = 256, temperature: float = 0.1, exclusion: float = 0.04,
                             margin: float = 0.1, smoothing: float = 1.0, device=None, random_state=None,
                             verbose: int = 0):
    """A copy of a fitted encoder whose feature maps agree on corresponding points of images.

    Each step draws ``pairs_per_step`` pairs of images; in each pair, ``points_per_pair``
    points are drawn uniformly in the first image's landmark box (widened by ``margin``),
    mapped into the second by the thin-plate spline through the pair's landmarks, and
    :func:`correspondence_loss` is taken on the encoder's smoothed, unit-norm maps at those
    points. Batch-norm statistics stay those of pretraining; Adam updates the encoder (not
    the decoder or heads). The steps run in the training engine (:class:`CorrespondenceTask`).

    Parameters
    ----------
    encoder : LocalDiscriminativeEncoder
        Fitted; it is not modified.
    images : list of float32 arrays of shape (H_i, W_i, C)
        Values in [0, 1]; any sizes.
    landmarks : list of arrays of shape (L, 2)
        ``(x, y)`` in each image's pixels (origin at the top-left pixel's centre); NaN rows
        are missing and left out of the pairs' splines.
    steps : int, default=150
    learning_rate : float, default=1e-4
    levels : tuple of int, default=(2, 3, 4)
        Encoder stages trained (strides 4, 8 and 16: the locator's ``features="encoder"``).
    sigma : float, default=0.03
        Gaussian smoothing of the maps, as a fraction of each working image's shorter side
        (the locator's center-sensitive ``sigma``).
    pairs_per_step, points_per_pair : int
    temperature : float, default=0.1
    exclusion : float, default=0.04
        Negatives closer than this fraction of the shorter side to the positive are skipped.
    margin : float, default=0.1
        Widening of the landmark box in which points are drawn (fraction of the shorter side).
    smoothing : float, default=1.0
        Of :func:`thin_plate_spline`.
    device : torch.device or None
        Where to train (None: the CPU).
    random_state : int, RandomState instance or None
        Seeds the pairs and points (the result is deterministic on a CPU).
    verbose : int, default=0

    Returns
    -------
    encoder : LocalDiscriminativeEncoder
        The fine-tuned copy, on the CPU, with ``correspondence_losses_`` (one float per step).

    Examples
    --------
    >>> import numpy as np
    >>> from skuld import LocalDiscriminativeEncoder
    >>> from skuld.landmarks import fine_tune_correspondence
    >>> from skuld.datasets import load_cxr_tiny
    >>> X = [x[..., None].astype(np.float32) / 255 for x in load_cxr_tiny().images]
    >>> enc = LocalDiscriminativeEncoder(max_iter=2, image_size=64, crop_size=64, random_state=0).fit(X)
    >>> marks = [np.array([[150.0, 250.0], [360.0, 250.0], [256.0, 400.0]])] * 4
    >>> tuned = fine_tune_correspondence(enc, X, marks, steps=2, points_per_pair=16, random_state=0)
    >>> len(tuned.correspondence_losses_)
    2
    """
    if len(images) != len(landmarks):
        raise ValueError(f"{len(images)} images but {len(landmarks)} landmark arrays")
    if len(images) < 2:
        raise ValueError("correspondence fine-tuning needs at least 2 images")
    rng = np.random.default_rng(check_random_state(random_state).randint(2**31))
    device = torch.device("cpu") if device is None else resolve_device(device)
    tuned = copy.deepcopy(encoder)
    model = tuned.model_.to(device)
    spec = tuned.input_spec_
    inputs, points, shapes = [], [], []
    for img, pts in zip(images, landmarks):
        big = img.shape[:2]
        h, w = spec.working_shape(*big)
        small = resize(to_tensor(np.asarray(img, dtype=np.float32)), (h, w))
        x, _, _ = pad_to_multiple(spec.normalize(small[None]))
        inputs.append(x.to(device))
        points.append(matching.rescale_points(np.asarray(pts, dtype=np.float64), big, (h, w)))
        shapes.append((h, w))
    task = CorrespondenceTask(inputs, points, shapes, rng, learning_rate, levels, sigma, pairs_per_step,
                              points_per_pair, temperature, exclusion, margin, smoothing)
    state = TrainingState(model, torch.optim.Adam(model.encoder.parameters(), lr=learning_rate))
    train(task, state, steps, EngineConfig(device=device, verbose=int(verbose), name="correspondence"))
    tuned.model_ = model.cpu().eval()
    tuned.correspondence_losses_ = [h["loss"] for h in state.history]
    return tuned
