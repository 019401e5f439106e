"""Per-pixel rows for scikit-learn: sample pixels of feature maps, classify every pixel.

Feature maps are what :meth:`LocalDiscriminativeEncoder.transform` returns: an array
``(n, H, W, D)`` or a list of ``(H_i, W_i, D)`` arrays; a pixel becomes a row of D values.

A scikit-learn Pipeline passes ``y`` unchanged to every step, so no transformer inside it can
turn image masks into per-pixel targets. Hence two pieces:

* :class:`PixelSampler`, a transformer: feature maps -> sampled rows (for unsupervised
  steps such as ``PCA`` or ``KMeans`` after it, or to look at the data), and the function
  that samples rows and their labels together (:meth:`PixelSampler.sample`);
* :class:`PixelClassifier`, the last step of a linear probe: it samples pixels and their
  labels with a PixelSampler, fits any scikit-learn classifier on them, and predicts whole
  masks::

      probe = make_pipeline(FrozenEstimator(encoder), PixelClassifier(LogisticRegression()))
      probe.fit(images, masks).predict(new_images)          # (n, H, W) masks

  Cross-validation and grid searches split by image, as they should.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted

from ..io import check_dense
from ..metrics import class_dice


def _as_maps(F, name: str = "X") -> list[np.ndarray]:
    """Feature maps as a list of (H, W, D) float arrays, validated."""
    check_dense(F, name, "feature maps (n_images, H, W, D)")
    if isinstance(F, np.ndarray) and F.dtype != object:
        if F.ndim != 4:
            raise ValueError(f"{name} must be feature maps of shape (n_images, H, W, D) or a list of (H, W, D) "
                             f"arrays, got shape {F.shape}")
        maps = list(F)
    elif isinstance(F, (list, tuple)) or (isinstance(F, np.ndarray) and F.dtype == object):
        maps = [np.asarray(f) for f in F]
        for i, f in enumerate(maps):
            if f.ndim != 3:
                raise ValueError(f"{name}[{i}] must be an (H, W, D) feature map, got shape {f.shape}")
    else:
        raise TypeError(f"{name} must be an array or a list of arrays, got {type(F).__name__}")
    if not maps:
        raise ValueError(f"{name} is empty: no feature maps")
    depths = {f.shape[-1] for f in maps}
    if len(depths) > 1:
        raise ValueError(f"{name} mixes feature maps of depths {sorted(depths)}")
    for i, f in enumerate(maps):
        if f.dtype.kind not in "biuf":
            raise ValueError(f"{name}[{i}] has dtype {f.dtype}; feature maps are numeric")
        if f.shape[0] == 0 or f.shape[1] == 0:
            raise ValueError(f"{name}[{i}] is empty, shape {f.shape}")
    return maps


def _per_image(arrays, maps: list[np.ndarray], what: str) -> list[np.ndarray] | None:
    """Masks or labels, one (H_i, W_i) array per feature map, or None."""
    if arrays is None:
        return None
    out = list(arrays) if not (isinstance(arrays, np.ndarray) and arrays.ndim == 2) else [arrays]
    if len(out) != len(maps):
        raise ValueError(f"{len(out)} {what} for {len(maps)} feature maps")
    out = [np.asarray(a) for a in out]
    for i, (a, f) in enumerate(zip(out, maps)):
        if a.shape != f.shape[:2]:
            raise ValueError(f"{what} {i} is {a.shape} but feature map {i} is {f.shape[:2]}")
    return out


class PixelSampler(TransformerMixin, BaseEstimator):
    """Turn per-pixel feature maps into rows: a random sample of pixels, optionally inside masks.

    Parameters
    ----------
    n_pixels : int or None, default=10_000
        Rows to draw, uniformly without replacement among all eligible pixels of all images
        (all of them when fewer, or when None).
    random_state : int, RandomState instance or None, default=None
        Which pixels are drawn; an int gives the same rows every call.

    Examples
    --------
    >>> import numpy as np
    >>> from skuld import PixelSampler
    >>> F = np.random.default_rng(0).random((2, 8, 8, 4), dtype=np.float32)
    >>> PixelSampler(n_pixels=10, random_state=0).fit_transform(F).shape
    (10, 4)
    """

    _parameter_constraints = {  # noqa: RUF012 (scikit-learn's convention)
        "n_pixels": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(self, n_pixels=10_000, random_state=None):
        self.n_pixels = n_pixels
        self.random_state = random_state

    def fit(self, X, y=None):
        """Check the parameters and record the feature depth; nothing is learned.

        Parameters
        ----------
        X : ndarray of shape (n, H, W, D), or list of (H_i, W_i, D) arrays
            Feature maps (e.g. an encoder's ``transform`` output).
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._validate_params()
        self.n_features_in_ = _as_maps(X)[0].shape[-1]
        return self

    def sample(self, X, y=None, mask=None):
        """Draw pixels: their features, their labels and where they are.

        Parameters
        ----------
        X : feature maps (n, H, W, D) or a list of (H_i, W_i, D) arrays
        y : masks (n, H, W) or a list of (H_i, W_i) arrays, optional
            Per-pixel labels, returned for the same pixels.
        mask : boolean masks like ``y``, optional
            Only pixels where ``mask`` is True are drawn (e.g. a fundus field of view).

        Returns
        -------
        rows : float32 array (m, D)
        labels : array (m,) of ``y``'s dtype, or None without ``y``
        where : int64 array (m, 3) of (image, row, column)
        """
        self._validate_params()
        maps = _as_maps(X)
        labels = _per_image(y, maps, "masks")
        masks = _per_image(mask, maps, "masks")
        sizes = np.array([f.shape[0] * f.shape[1] for f in maps])
        if masks is None:
            flat = np.arange(sizes.sum())
        else:
            flat = np.concatenate([np.flatnonzero(m.astype(bool)) + off
                                   for m, off in zip(masks, np.concatenate([[0], np.cumsum(sizes)[:-1]]))])
            if flat.size == 0:
                raise ValueError("mask leaves no pixel to sample")
        rng = check_random_state(self.random_state)
        if self.n_pixels is not None and self.n_pixels < flat.size:
            flat = np.sort(rng.choice(flat, self.n_pixels, replace=False))
        image = np.searchsorted(np.cumsum(sizes), flat, side="right")
        local = flat - np.concatenate([[0], np.cumsum(sizes)])[image]
        widths = np.array([f.shape[1] for f in maps])[image]
        where = np.stack([image, local // widths, local % widths], 1).astype(np.int64)
        rows = np.empty((len(flat), maps[0].shape[-1]), np.float32)
        lab = None if labels is None else np.empty(len(flat), labels[0].dtype)
        for i in np.unique(image):
            sel = image == i
            r, c = where[sel, 1], where[sel, 2]
            rows[sel] = maps[i][r, c]
            if lab is not None:
                lab[sel] = labels[i][r, c]
        if not np.isfinite(rows).all():
            raise ValueError("X contains NaN or infinity")
        return rows, lab, where

    def transform(self, X, mask=None):
        """Sampled rows of ``X``; see :meth:`sample`.

        Parameters
        ----------
        X : ndarray of shape (n, H, W, D), or list of (H_i, W_i, D) arrays
            Feature maps (e.g. an encoder's ``transform`` output).
        mask : boolean masks (n, H, W) or list of (H_i, W_i) arrays, optional
            Only pixels where ``mask`` is True are drawn.

        Returns
        -------
        ndarray of shape (m, D), float32
        """
        check_is_fitted(self, "n_features_in_")
        return self.sample(X, mask=mask)[0]


class PixelClassifier(BaseEstimator):
    """Classify every pixel of feature maps with any scikit-learn classifier.

    The last step of a linear probe on learned embeddings:
    ``make_pipeline(FrozenEstimator(encoder), PixelClassifier(LogisticRegression()))``.

    Parameters
    ----------
    estimator : classifier, default=None
        Fitted on the sampled rows (cloned first). None: ``LogisticRegression(max_iter=1000)``.
    n_pixels : int or None, default=20_000
        Training pixels drawn by a :class:`PixelSampler` (None: every pixel).
    random_state : int, RandomState instance or None, default=None
        Which training pixels are drawn.
    batch_rows : int, default=1_000_000
        Rows classified at once in predict (bounds memory).

    Attributes
    ----------
    estimator_ : the fitted classifier
    classes_ : ndarray, the labels seen in fit (``classes_[0]`` counts as background in
        :meth:`score`)
    n_features_in_ : int, D

    Examples
    --------
    >>> import numpy as np
    >>> from skuld import PixelClassifier
    >>> rng = np.random.default_rng(0)
    >>> F = rng.normal(size=(2, 16, 16, 4)).astype(np.float32)   # feature maps (n, H, W, D)
    >>> y = F[..., 0] > 0                                          # a label per pixel
    >>> clf = PixelClassifier(n_pixels=200, random_state=0).fit(F, y)
    >>> clf.predict(F).shape, clf.score(F, y) > 0.9                # masks (n, H, W); Dice
    ((2, 16, 16), True)
    """

    _parameter_constraints = {  # noqa: RUF012 (scikit-learn's convention)
        "estimator": [HasMethods(["fit", "predict_proba"]), None],
        "n_pixels": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "batch_rows": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, estimator=None, n_pixels=20_000, random_state=None, batch_rows=1_000_000):
        self.estimator = estimator
        self.n_pixels = n_pixels
        self.random_state = random_state
        self.batch_rows = batch_rows

    def fit(self, X, y, mask=None):
        """Fit the classifier on sampled pixels.

        Parameters
        ----------
        X : feature maps (n, H, W, D) or a list of (H_i, W_i, D) arrays
        y : masks (n, H, W) or a list of (H_i, W_i) arrays (boolean or integer labels)
        mask : boolean masks, optional: train only on pixels inside them

        Returns
        -------
        self
        """
        from sklearn.linear_model import LogisticRegression

        self._validate_params()
        if y is None:
            raise ValueError("PixelClassifier requires y to be passed, but the target y is None")
        sampler = PixelSampler(self.n_pixels, self.random_state)
        rows, labels, _ = sampler.sample(X, y, mask)
        found = np.unique(labels)
        if len(found) < 2:
            raise ValueError(f"the sampled pixels hold a single label ({found[0]!r}); need at least two")
        self.n_features_in_ = rows.shape[1]
        est = clone(self.estimator) if self.estimator is not None else LogisticRegression(max_iter=1000)
        self.estimator_ = est.fit(rows, labels)
        self.classes_ = np.asarray(self.estimator_.classes_)
        return self

    def _rows_out(self, X, fn, width):
        check_is_fitted(self, "estimator_")
        maps = _as_maps(X)
        if maps[0].shape[-1] != self.n_features_in_:
            raise ValueError(f"X has {maps[0].shape[-1]} features per pixel, the classifier was fitted on "
                             f"{self.n_features_in_}")
        outs = []
        for f in maps:
            rows = f.reshape(-1, f.shape[-1])
            if not np.isfinite(rows).all():
                raise ValueError("X contains NaN or infinity")
            parts = [fn(rows[s : s + self.batch_rows]) for s in range(0, len(rows), self.batch_rows)]
            out = np.concatenate(parts)
            outs.append(out.reshape(f.shape[:2] + ((width,) if width else ())))
        return np.stack(outs) if isinstance(X, np.ndarray) and X.dtype != object else outs

    def predict_proba(self, X):
        """Per-pixel class probabilities.

        Parameters
        ----------
        X : ndarray of shape (n, H, W, D), or list of (H_i, W_i, D) arrays
            Feature maps (e.g. an encoder's ``transform`` output).

        Returns
        -------
        ndarray of shape (n, H, W, n_classes), float
            Columns in the order of ``classes_`` (a list for list input).
        """
        check_is_fitted(self, "estimator_")
        return self._rows_out(X, self.estimator_.predict_proba, len(self.classes_))

    def predict(self, X):
        """Per-pixel labels.

        Parameters
        ----------
        X : ndarray of shape (n, H, W, D), or list of (H_i, W_i, D) arrays
            Feature maps (e.g. an encoder's ``transform`` output).

        Returns
        -------
        ndarray of shape (n, H, W)
            Values from ``classes_`` (a list of (H_i, W_i) arrays for list input).
        """
        check_is_fitted(self, "estimator_")
        return self._rows_out(X, self.estimator_.predict, 0)

    def score(self, X, y, sample_weight=None):
        """Mean Dice over images and over the classes after ``classes_[0]`` (the background).

        Parameters
        ----------
        X : ndarray of shape (n, H, W, D), or list of (H_i, W_i, D) arrays
            Feature maps (e.g. an encoder's ``transform`` output).
        y : ndarray of shape (n, H, W), or list of (H_i, W_i) arrays
            True labels.
        sample_weight : array-like of shape (n,), optional
            One weight per image.

        Returns
        -------
        float in [0, 1]
        """
        truth = _per_image(y, _as_maps(X), "masks")
        return class_dice(self.predict(X), truth, self.classes_[1:], sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.target_tags.required = True
        return tags
