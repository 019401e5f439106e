import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skuld import PixelIndex
from skuld.retrieval import MISSING, auto_factory

from ..helpers import blobs


def random_embeddings(n, h, w, d=8, seed=0):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, h, w, d)).astype(np.float32)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


@given(seed=st.integers(0, 10**6), n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       stride=st.integers(1, 3), metric=st.sampled_from(["cosine", "l2", "ip"]))
@settings(max_examples=40, deadline=None)
def test_exact_index_finds_every_indexed_pixel_at_its_own_location(seed, n, h, w, stride, metric):
    E = random_embeddings(n, h, w, seed=seed)
    idx = PixelIndex(index="Flat", metric=metric, stride=stride).fit(E)
    rows, cols = np.meshgrid(np.arange(0, h, stride), np.arange(0, w, stride), indexing="ij")
    for i in range(n):
        Q = E[i, rows, cols].reshape(-1, 8)
        _, loc = idx.kneighbors(Q, k=1)
        expected = np.stack([np.full(rows.size, i), rows.ravel(), cols.ravel()], axis=1)
        np.testing.assert_array_equal(loc[:, 0], expected)
    assert idx.n_vectors_ == n * rows.size


@given(seed=st.integers(0, 10**6), k=st.integers(1, 6))
@settings(max_examples=30, deadline=None)
def test_exact_index_returns_the_true_nearest_neighbours(seed, k):
    E = random_embeddings(2, 5, 6, seed=seed)
    Q = random_embeddings(1, 1, 4, seed=seed + 1)[0, 0]
    D, loc = PixelIndex(index="Flat").fit(E).kneighbors(Q, k=k)
    flat = E.reshape(-1, 8)
    sims = Q @ flat.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    np.testing.assert_allclose(D, np.take_along_axis(sims, order, 1), rtol=1e-5, atol=1e-6)
    img, rem = np.divmod(order, 30)
    np.testing.assert_array_equal(loc[..., 0], img)
    np.testing.assert_array_equal(loc[..., 1] * 6 + loc[..., 2], rem)


def test_masks_and_stride_choose_the_pixels():
    E = random_embeddings(2, 6, 7)
    masks = [np.zeros((6, 7), bool), np.ones((6, 7), bool)]
    masks[0][2:5, 1:4] = True
    idx = PixelIndex(index="Flat", stride=2).fit(E, masks=masks)
    assert idx.n_vectors_ == 2 + 3 * 4  # rows 2,4 x cols 2 in image 0 (2 px); 3 x 4 in image 1
    _, loc = idx.kneighbors(E[0, 4, 2], k=1)
    assert loc[0, 0].tolist() == [0, 4, 2]
    _, loc = idx.kneighbors_of([[1, 4, 6]], k=1)
    assert loc[0, 0].tolist() == [1, 4, 6]
    with pytest.raises(KeyError, match="not indexed"):
        idx.ids_of([[0, 0, 0]])
    with pytest.raises(KeyError, match="stride"):
        idx.ids_of([[1, 1, 1]])


def test_add_keeps_image_numbers_and_fewer_than_k_gives_the_sentinel():
    idx = PixelIndex(index="Flat").fit(random_embeddings(1, 2, 2))
    new = idx.add(random_embeddings(2, 3, 1, seed=5))
    assert new.tolist() == [1, 2] and idx.n_images_ == 3 and idx.n_vectors_ == 4 + 6
    D, loc = idx.kneighbors(random_embeddings(1, 1, 1, seed=9)[0, 0], k=12)
    assert (loc[0, 10:] == MISSING).all() and np.isinf(D[0, 10:]).all()
    assert (loc[0, :10] >= 0).all()


def test_ivf_index_with_tunable_probes_and_ragged_input():
    E = [random_embeddings(1, 60, 50, seed=s)[0] for s in range(3)] + [random_embeddings(1, 40, 70, seed=7)[0]]
    idx = PixelIndex(index="IVF16,SQ8", nprobe=2, random_state=0).fit(E)
    Q = E[3][10, 20]
    _, loc = idx.kneighbors(Q, k=3)
    assert loc.shape == (1, 3, 3)
    idx.set_params(nprobe=16)  # every list: the top hit is the pixel itself up to SQ8 rounding
    assert idx.kneighbors(Q, k=1)[1][0, 0].tolist() == [3, 10, 20]


def test_save_load_mmap_and_pickle_give_identical_answers(tmp_path):
    E = random_embeddings(3, 20, 20)
    idx = PixelIndex(index="IVF8,SQ8", random_state=0, stride=2).fit(E)
    Q = random_embeddings(1, 5, 1, seed=3)[0, :, 0]
    expected = idx.kneighbors(Q, k=4)
    idx.save(tmp_path / "pix")
    idx.save(tmp_path / "pix")  # overwrite in place
    assert sorted(p.name for p in (tmp_path / "pix").iterdir()) == ["ids.npz", "index.faiss", "meta.json"]
    for loaded in (PixelIndex.load(tmp_path / "pix"), PixelIndex.load(tmp_path / "pix", mmap=True),
                   joblib.load(joblib.dump(idx, tmp_path / "i.joblib")[0])):
        for a, b in zip(loaded.kneighbors(Q, k=4), expected):
            np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name or "old" in p.name] == []


def test_queries_in_parallel_worker_processes():
    from joblib import Parallel, delayed

    E = random_embeddings(2, 30, 30)
    idx = PixelIndex(index="Flat").fit(E)
    Q = E[1, 5:9, 7]
    results = Parallel(n_jobs=2, backend="loky")(delayed(idx.kneighbors)(Q[i : i + 1], 1) for i in range(4))
    assert [r[1][0, 0].tolist() for r in results] == [[1, 5 + i, 7] for i in range(4)]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: PixelIndex().fit(np.zeros((2, 3, 3))), r"\(n_images, H, W, D\)"),
        (lambda: PixelIndex().fit([]), "empty"),
        (lambda: PixelIndex().fit(np.full((1, 2, 2, 4), np.nan)), "NaN"),
        (lambda: PixelIndex(index="NotAnIndex12").fit(random_embeddings(1, 2, 2)), "NotAnIndex12"),
        (lambda: PixelIndex(index="IVF4096,Flat").fit(random_embeddings(1, 8, 8)), "training vectors"),
        (lambda: PixelIndex().fit(random_embeddings(1, 2, 2), masks=[np.zeros((2, 2), bool)]), "every mask is empty"),
        (lambda: PixelIndex().fit(np.zeros((1, 2, 2, 4), np.float32)), "zero vectors"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_queries_are_named():
    idx = PixelIndex(index="Flat").fit(random_embeddings(1, 3, 3))
    with pytest.raises(ValueError, match=r"\(q, 8\)"):
        idx.kneighbors(np.ones((2, 5)))
    with pytest.raises(ValueError, match="k must be"):
        idx.kneighbors(np.ones((1, 8)), k=0)


def test_auto_choice_by_size():
    assert auto_factory(10_000) == "Flat"
    assert auto_factory(1_000_000) == "IVF4096,SQ8"
    assert auto_factory(50_000_000) == "IVF32768_HNSW32,PQ16"


def test_fit_with_an_encoder_embeds_image_by_image():
    from skuld import LocalDiscriminativeEncoder

    from ..helpers import TINY, blobs

    X = blobs(3, 40)
    enc = LocalDiscriminativeEncoder(**TINY).fit(X)
    direct = PixelIndex(index="Flat", stride=3).fit(enc.transform(X))
    via = PixelIndex(index="Flat", stride=3).fit(X, encoder=enc)
    Q = enc.transform(X[:1])[0, 10:12, 5]
    for a, b in zip(via.kneighbors(Q, 3), direct.kneighbors(Q, 3)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert via.add(X[:1], encoder=enc).tolist() == [3]


def test_queries_in_forked_children_after_the_parent_searched():
    import multiprocessing as mp

    E = random_embeddings(2, 40, 40)
    idx = PixelIndex(index="Flat").fit(E)
    idx.kneighbors(E[0, :50, 0], k=5)  # the parent's OpenMP threads are now running
    with mp.get_context("fork").Pool(2) as pool:
        res = pool.starmap_async(idx.kneighbors, [(E[1, i : i + 1, 3], 1) for i in range(4)])
        out = res.get(timeout=120)  # a hang fails here instead of blocking the suite
    assert [o[1][0, 0].tolist() for o in out] == [[1, i, 3] for i in range(4)]


def test_query_by_a_pixel_of_a_new_image():
    E = random_embeddings(2, 6, 6)
    idx = PixelIndex(index="Flat").fit(E)
    new = E[1].copy()  # a "new" image that happens to equal image 1
    _, loc = idx.kneighbors_of([[2, 3], [5, 0]], k=1, embeddings=new)
    assert loc[:, 0].tolist() == [[1, 2, 3], [1, 5, 0]]
    with pytest.raises(ValueError, match="outside"):
        idx.kneighbors_of([[6, 0]], embeddings=new)


def test_hnsw_factory_string_and_ef_search_after_fit():
    E = random_embeddings(2, 20, 20)
    idx = PixelIndex(index="HNSW16", ef_search=8).fit(E)
    assert idx.index_.hnsw.efSearch == 8
    idx.set_params(ef_search=128)
    assert idx.index_.hnsw.efSearch == 128
    assert idx.kneighbors(E[1, 7, 9], k=1)[1][0, 0].tolist() == [1, 7, 9]


def test_any_transformer_can_embed_the_images():
    """The index takes anything with transform (images -> per-pixel vectors), not only skuld's encoder."""
    from sklearn.preprocessing import FunctionTransformer

    def features(x):  # (1, H, W, 1) -> (1, H, W, 3): intensity, its square, a constant
        return np.concatenate([x, x**2, np.ones_like(x)], axis=-1)

    images = blobs(3, 32)
    index = PixelIndex(index="Flat", stride=4).fit(images, encoder=FunctionTransformer(features))
    assert index.dim_ == 3 and index.n_images_ == 3 and index.n_vectors_ == 3 * 8 * 8
    _, where = index.kneighbors(features(images[1:2, ..., None])[0, 8, 12], k=1)
    assert where[0, 0, 1:].tolist() == [8, 12] or np.allclose(images[where[0, 0, 0], where[0, 0, 1], where[0, 0, 2]],
                                                               images[1, 8, 12])
    with pytest.raises(TypeError, match="transform"):
        PixelIndex().fit(images, encoder=object())
