import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from skuld import plotting  # noqa: E402


@pytest.fixture
def emb():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(20, 30, 8)).astype(np.float32)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def test_embedding_rgb_is_a_colour_image(emb):
    rgb = plotting.embedding_rgb(emb)
    assert rgb.shape == (20, 30, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert rgb.std() > 0.05
    with pytest.raises(ValueError, match=r"\(H, W, D\)"):
        plotting.embedding_rgb(emb[0])


def test_similarity_map_is_one_at_the_query_pixel(emb):
    sim = plotting.similarity_map(emb, emb[4, 7])
    assert sim.shape == (20, 30) and np.isclose(sim[4, 7], 1) and sim.max() <= 1 + 1e-5


def test_every_plot_returns_its_axes_or_figure(emb):
    img = np.linspace(0, 1, 600).reshape(20, 30)
    labels = (np.arange(600).reshape(20, 30) // 100) % 4
    assert plotting.plot_embedding(emb).images
    assert plotting.plot_clusters(img, labels).get_legend() is not None
    ax = plotting.plot_similarity(img, emb, (3, 5))
    assert len(ax.images) == 2 and ax.lines
    ax = plotting.plot_landmarks(img, np.array([[5, 5], [10, 12]]), np.array([[6, 5], [12, 10]]), radius=3)
    assert len(ax.patches) == 2
    ax = plotting.plot_landmark_similarity(img, np.random.default_rng(0).random((2, 10, 15)), 1, np.array([[5, 5], [9, 4]]))
    assert ax.images[1].get_extent() == [-0.5, 29.5, 19.5, -0.5] and ax.get_title() == "landmark 2"
    fig = plotting.plot_retrieval([img, img], np.array([[0, 5, 5], [1, 10, 20], [-1, -1, -1]]), img, (2, 2), size=8)
    assert sum(bool(a.images) for a in fig.axes) == 3
    history = [{"step": i, "stage": "pd" if i < 5 else "ld", "loss": 10 - i * 0.1, "patch": 5.0,
                **({"region": 1.0} if i >= 5 else {})} for i in range(30)]
    ax = plotting.plot_loss(history)
    assert {line.get_label() for line in ax.lines} >= {"loss", "patch", "region"}


def test_mismatched_inputs_are_named(emb):
    with pytest.raises(ValueError, match="differ in size"):
        plotting.plot_clusters(np.zeros((5, 5)), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="differ"):
        plotting.plot_landmarks(np.zeros((5, 5)), np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="empty"):
        plotting.plot_loss([])


def test_plots_of_a_fitted_encoder(tmp_path):
    from skuld import LocalDiscriminativeEncoder

    from .helpers import TINY, blobs

    X = blobs(3, 40)
    enc = LocalDiscriminativeEncoder(**TINY).fit(X)
    E = enc.transform(X[:1])[0]
    fig = matplotlib.pyplot.figure()
    plotting.plot_similarity(X[0], E, (20, 20), ax=fig.add_subplot(1, 2, 1))
    plotting.plot_loss(enc.loss_history_, ax=fig.add_subplot(1, 2, 2), smooth=1)
    fig.savefig(tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000
