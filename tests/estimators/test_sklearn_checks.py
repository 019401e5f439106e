"""scikit-learn's estimator checks, and image versions of the ones that cannot apply.

The common checks feed tabular data (2-D arrays of shape (n_samples, n_features)); skuld's
estimators take images of at least 32 x 32 pixels. Every check that fails only because of
that is listed with its reason; what it verifies is then tested on images below.
"""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.utils.estimator_checks import parametrize_with_checks

from skuld import (
    LocalDiscriminativeEncoder,
    OneShotLandmarkLocator,
    PixelClassifier,
    PixelIndex,
    PixelSampler,
    ShapeGuidedSegmenter,
    TransferSegmenter,
)

from ..helpers import TINY, blobs

TABULAR = ("X must be images (n, H, W[, C]) of at least 32 x 32 pixels; the check fits on 2-D tabular "
           "data, which is rejected with a ValueError. Tested on images in test_sklearn_checks.py")
NO_FEATURES = ("images have no 'features' axis: n_features_in_ is not defined for pixel-wise estimators "
               "(the channel count is n_channels_in_)")

EXPECTED_FAILED = {
    name: TABULAR
    for name in [
        "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_positive_only_tag_during_fit",
        "check_estimators_dtypes", "check_complex_data", "check_dtype_object", "check_estimators_empty_data_messages",
        "check_pipeline_consistency", "check_estimators_nan_inf", "check_estimators_pickle",
        "check_estimators_pickle(readonly_memmap=True)", "check_f_contiguous_array_estimator",
        "check_transformer_data_not_an_array", "check_transformer_general", "check_transformer_preserve_dtypes",
        "check_transformer_general(readonly_memmap=True)", "check_transformer_n_iter",
        "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_fit2d_1sample",
        "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
        "check_fit2d_predict1d",
    ]
}
EXPECTED_FAILED.update({"check_n_features_in": NO_FEATURES, "check_n_features_in_after_fitting": NO_FEATURES})


MAPS = ("X must be per-pixel feature maps (n, H, W, D); the check fits on 2-D tabular data, which is "
        "rejected with a ValueError. Tested on feature maps in tests/test_pixels.py")
COMMON_TABULAR = [
    "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_positive_only_tag_during_fit",
    "check_estimators_dtypes", "check_complex_data", "check_dtype_object", "check_estimators_empty_data_messages",
    "check_pipeline_consistency", "check_estimators_nan_inf", "check_estimators_pickle",
    "check_estimators_pickle(readonly_memmap=True)", "check_f_contiguous_array_estimator",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_fit2d_1sample",
    "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_fit2d_predict1d", "check_n_features_in", "check_n_features_in_after_fitting",
]
SEGMENTER_FAILED = {name: TABULAR for name in COMMON_TABULAR}
SEGMENTER_FAILED.update({"check_n_features_in": NO_FEATURES, "check_n_features_in_after_fitting": NO_FEATURES})
MAPS_FAILED = {name: MAPS for name in COMMON_TABULAR + [
    "check_transformer_data_not_an_array", "check_transformer_general", "check_transformer_preserve_dtypes",
    "check_transformer_general(readonly_memmap=True)"]}
PRIORS = ("y is a list of binary shape-prior masks (2-D arrays of at least 16 x 16), not one target per "
          "sample; the check passes a 1-D y, which is rejected with a ValueError. Tested in tests/test_shape_guided.py")
SHAPE_FAILED = {name: TABULAR for name in COMMON_TABULAR}
SHAPE_FAILED.update({"check_n_features_in": NO_FEATURES, "check_n_features_in_after_fitting": NO_FEATURES})
EMBEDDINGS = ("X must be per-pixel embeddings (n, H, W, D), or images with an encoder; the check fits on 2-D "
              "tabular data, which is rejected with a ValueError naming the expected shape. Tested on embeddings "
              "in tests/estimators/test_index.py")
# Of the tabular checks, the NaN/inf one too: the 2-D table is refused by its shape before its values are
# looked at (embeddings with NaN are refused: test_index.py).
INDEX_FAILED = {name: EMBEDDINGS for name in COMMON_TABULAR + ["check_positive_only_tag_during_fit"]}
INDEX_FAILED.update({"check_n_features_in": NO_FEATURES, "check_n_features_in_after_fitting": NO_FEATURES})
TEMPLATE = ("fit takes a template image and its (L, 2) landmarks; the check passes a 2-D table (taken as one "
            "image) and a 1-D y, which is rejected with a ValueError naming the landmarks' shape. Tested in "
            "tests/estimators/test_locator.py")
LOCATOR_FAILED = {name: TEMPLATE for name in COMMON_TABULAR + ["check_positive_only_tag_during_fit"]}
LOCATOR_FAILED.update({"check_n_features_in": NO_FEATURES, "check_n_features_in_after_fitting": NO_FEATURES})
EXPECTED = {
    LocalDiscriminativeEncoder: EXPECTED_FAILED, TransferSegmenter: SEGMENTER_FAILED,
    PixelSampler: MAPS_FAILED, PixelClassifier: MAPS_FAILED, ShapeGuidedSegmenter: SHAPE_FAILED,
    PixelIndex: INDEX_FAILED, OneShotLandmarkLocator: LOCATOR_FAILED,
}


@parametrize_with_checks(
    [LocalDiscriminativeEncoder(**TINY), TransferSegmenter(max_iter=1, crop_size=32, width=0.25, random_state=0),
     PixelSampler(random_state=0), PixelClassifier(random_state=0),
     ShapeGuidedSegmenter(ShapeGuidedSegmenter.default_encoder(max_iter=1, crop_size=32, image_size=32),
                          refine=False, random_state=0),
     PixelIndex(index="Flat", random_state=0),
     OneShotLandmarkLocator(correspondence_steps=0, n_pseudo_templates=0, random_state=0)],
    expected_failed_checks=lambda est: EXPECTED[type(est)],
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ---- TransferSegmenter: the same properties on images ----------------------------------------
SEG = dict(max_iter=2, batch_size=2, crop_size=32, width=0.25, random_state=0)


def test_segmenter_fit_is_idempotent_and_leaves_inputs_and_params_alone():
    X = blobs(3, 40)
    y = X > 0.5
    X_copy, y_copy = X.copy(), y.copy()
    est = TransferSegmenter(**SEG)
    params = est.get_params()
    a = est.fit(X, y).predict_proba(X)
    assert est.get_params() == params
    b = est.fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)
    perm = [2, 0, 1]
    np.testing.assert_allclose(est.predict_proba(X[perm]), a[perm], atol=1e-6)
    np.testing.assert_allclose(est.predict_proba(X[1:2]), a[1:2], atol=1e-6)
    state = {k: v.clone() for k, v in est.net_.state_dict().items()}
    est.predict(X)
    assert all(np.array_equal(state[k], v) for k, v in est.net_.state_dict().items())


def test_segmenter_on_readonly_memmaps_and_other_dtypes(tmp_path):
    X = blobs(2, 40)
    np.save(tmp_path / "x.npy", (X * 255).astype(np.uint8))
    np.save(tmp_path / "y.npy", X > 0.5)
    mx, my = np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")
    est = TransferSegmenter(**SEG).fit(mx, my)
    assert est.predict(np.asfortranarray(X.astype(np.float64))).shape == (2, 40, 40)


# ---- the same properties on image input ---------------------------------------------------

@pytest.fixture(scope="module")
def X():
    return blobs(4, 40)


@pytest.fixture(scope="module")
def fitted(X):
    return LocalDiscriminativeEncoder(**TINY).fit(X)


def test_fit_returns_self_and_does_not_touch_params(X):
    est = LocalDiscriminativeEncoder(**TINY)
    params = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in est.get_params().items()}
    assert est.fit(X) is est
    assert est.get_params() == params


def test_fit_is_idempotent_and_does_not_modify_its_input(X):
    X_copy = X.copy()
    a = LocalDiscriminativeEncoder(**TINY).fit(X).transform(X[:1])
    b = LocalDiscriminativeEncoder(**TINY).fit(X).fit(X).transform(X[:1])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(X, X_copy)


def test_transform_does_not_change_the_fitted_state(fitted, X):
    before = {k: v.clone() for k, v in fitted.model_.state_dict().items()}
    d = dict(fitted.__dict__)
    fitted.transform(X)
    fitted.predict(X)
    assert all(np.array_equal(before[k], v) for k, v in fitted.model_.state_dict().items())
    assert set(fitted.__dict__) == set(d)


def test_sample_order_and_subset_invariance(fitted, X):
    E = fitted.transform(X)
    perm = [2, 0, 3, 1]
    np.testing.assert_allclose(fitted.transform(X[perm]), E[perm], atol=1e-6)
    np.testing.assert_allclose(fitted.transform(X[1:2]), E[1:2], atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, bool])
def test_input_dtypes_and_memory_layouts(fitted, X, dtype):
    if dtype == bool:
        imgs = X > 0.5
    elif np.issubdtype(dtype, np.integer):
        imgs = (X * np.iinfo(dtype).max).astype(dtype)
    else:
        imgs = X.astype(dtype)
    imgs = np.asfortranarray(imgs)
    imgs.setflags(write=False)
    E = fitted.transform(imgs)
    assert E.dtype == np.float32 and E.shape == (4, 40, 40, 8)


def test_fit_on_readonly_memmap(tmp_path, X):
    path = tmp_path / "x.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    assert LocalDiscriminativeEncoder(**TINY).fit(mm).n_iter_ == TINY["max_iter"]


def test_clone_of_a_fitted_estimator_is_unfitted(fitted):
    twin = clone(fitted)
    assert not hasattr(twin, "model_")


def test_sparse_input_is_named():
    import scipy.sparse as sp

    with pytest.raises(TypeError, match="sparse"):
        LocalDiscriminativeEncoder(**TINY).fit(sp.csr_matrix(np.ones((40, 40))))


# ---- OneShotLandmarkLocator and PixelIndex: the same properties on their own input ----------
def test_locator_fit_is_idempotent_returns_self_and_leaves_params_and_input_alone():
    from ..helpers import phantom, rotation

    template, marks = phantom()
    enc = LocalDiscriminativeEncoder(**{**TINY, "rotation": 0, "rot90": False}).fit(template[None])
    loc = OneShotLandmarkLocator(encoder=FrozenEstimator(enc), refine_patch=15, refine_radius=6)
    params, template_copy, marks_copy = loc.get_params(), template.copy(), marks.copy()
    query = np.stack([phantom(rotation(d, 1, (d, 1)))[0] for d in (2, -3)])
    assert loc.fit(template, marks) is loc and loc.get_params() == params
    a = loc.predict(query)
    b = loc.fit(template, marks).predict(query)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(template, template_copy)
    np.testing.assert_array_equal(marks, marks_copy)
    np.testing.assert_allclose(loc.predict(query[::-1]), a[::-1], atol=1e-6)   # order and subsets
    np.testing.assert_allclose(loc.predict(query[1:]), a[1:], atol=1e-6)
    assert not hasattr(clone(loc), "templates_")


def test_index_fit_is_idempotent_returns_self_and_leaves_params_and_input_alone():
    E = np.random.default_rng(0).normal(size=(3, 12, 10, 4)).astype(np.float32)
    E_copy = E.copy()
    index = PixelIndex(index="IVF4,Flat", train_size=200, random_state=0)
    params = index.get_params()
    assert index.fit(E) is index and index.get_params() == params
    a = index.kneighbors(E[0, 3, 4], k=5)
    b = index.fit(E).kneighbors(E[0, 3, 4], k=5)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(E, E_copy)
    assert not hasattr(clone(index), "index_")
