import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

import skuld
from skuld.cli import main
from skuld.demo import run_demo
from skuld.render import cluster_overlay, colormap, heatmap_overlay, side_by_side

from .helpers import blobs


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "scans"
    d.mkdir()
    for i, img in enumerate(blobs(3, 48)):
        iio.imwrite(d / f"scan{i}.png", (img * 255).astype(np.uint8))
    return d


def test_fit_then_embed(image_dir, tmp_path, capsys):
    model = tmp_path / "model.skuld"
    assert main(["fit", str(image_dir), "--out", str(model), "--max-iter", "2", "--crop-size", "32",
                 "--image-size", "48", "--batch-size", "1", "--random-state", "0", "--no-rotation"]) == 0
    assert model.exists()
    out = tmp_path / "emb"
    assert main(["embed", str(model), str(image_dir / "*.png"), "--out", str(out), "--float16"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["scan0.npy", "scan1.npy", "scan2.npy", "skuld-embeddings.json"]
    E = np.load(out / "scan1.npy")
    assert E.shape == (48, 48, 32) and E.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(E.astype(np.float32), axis=-1), 1, atol=1e-2)
    assert "wrote" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.skuld")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "skuld", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout and "embed" in out.stdout


def test_demo_writes_pictures(tmp_path):
    result = run_demo(str(tmp_path / "demo"), max_iter=2, verbose=0)
    for path in result["files"]:
        img = iio.imread(path)
        assert img.dtype == np.uint8 and img.shape[0] == 512 and img.shape[2] == 3
    assert 0 <= result["lung_hit_rate"] <= 1 and 0.1 < result["lung_fraction"] < 0.5
    np.testing.assert_allclose(result["cluster_coverage"].sum(), 1)


def test_render_helpers():
    img = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    labels = np.arange(64).reshape(8, 8) % 3
    assert cluster_overlay(img, labels).shape == (8, 8, 3)
    cm = colormap(img)
    assert cm.shape == (8, 8, 3) and cm.min() >= 0 and cm.max() <= 1
    assert not np.allclose(cm[0, 0], cm[-1, -1])
    joined = side_by_side([heatmap_overlay(img, img), heatmap_overlay(img[:4], img[:4])])
    assert joined.shape == (8, 8 + 4 + 8, 3)


def test_embed_resumes_and_index_builds(image_dir, tmp_path, capsys):
    model = tmp_path / "model.skuld"
    main(["fit", str(image_dir), "--out", str(model), "--max-iter", "1", "--crop-size", "32", "--image-size", "48",
          "--batch-size", "1", "--random-state", "0"])
    out = tmp_path / "emb"
    out.mkdir()
    (out / "scan0.npy").write_bytes(b"from an earlier run")
    assert main(["embed", str(model), str(image_dir), "--out", str(out)]) == 0
    assert (out / "scan0.npy").read_bytes() == b"from an earlier run"  # skipped: resumed
    assert np.load(out / "scan2.npy").shape == (48, 48, 32)
    assert main(["index", str(model), str(image_dir), "--out", str(tmp_path / "idx"), "--stride", "2"]) == 0
    from skuld import PixelIndex

    idx = PixelIndex.load(tmp_path / "idx")
    assert idx.n_vectors_ == 3 * 24 * 24 and idx.n_images_ == 3
    assert (tmp_path / "idx" / "images.txt").read_text().count("\n") == 3


def interrupt_second_transform(monkeypatch) -> dict:
    """Make the encoder's second ``transform`` call raise KeyboardInterrupt (Ctrl-C mid-run);
    the returned ``{"n": calls}`` counts the calls (set it past 2 to stop interrupting)."""
    from skuld import LocalDiscriminativeEncoder

    calls = {"n": 0}
    original = LocalDiscriminativeEncoder.transform

    def flaky(self, X):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, X)

    monkeypatch.setattr(LocalDiscriminativeEncoder, "transform", flaky)
    return calls


def test_embed_stack_is_memory_mapped_and_resumes_after_an_interruption(image_dir, tmp_path, monkeypatch):

    model = tmp_path / "model.skuld"
    main(["fit", str(image_dir), "--out", str(model), "--max-iter", "1", "--crop-size", "32", "--image-size", "48",
          "--batch-size", "1", "--random-state", "0"])
    straight = tmp_path / "straight.npy"
    assert main(["embed", str(model), str(image_dir), "--stack", str(straight)]) == 0
    E = np.load(straight, mmap_mode="r")
    assert E.shape == (3, 48, 48, 32) and E.dtype == np.float32

    calls = interrupt_second_transform(monkeypatch)
    target = tmp_path / "resumed.npy"
    # Interrupted while embedding image 2: image 1 is on disk and counted.
    assert main(["embed", str(model), str(image_dir), "--stack", str(target)]) == 130
    assert not target.exists() and (tmp_path / "resumed.npy.progress").read_text() == "1"
    calls["n"] = 10  # no more interruptions; count the rerun's images
    assert main(["embed", str(model), str(image_dir), "--stack", str(target)]) == 0
    assert calls["n"] == 12  # only images 2 and 3 were embedded again
    np.testing.assert_array_equal(np.load(target), np.asarray(E))
    assert not (tmp_path / "resumed.npy.progress").exists()
    assert (tmp_path / "resumed.npy.paths.txt").read_text().count("\n") == 3


@pytest.fixture
def mixed_size_dir(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    for i, (h, w) in enumerate([(48, 64), (32, 32), (64, 48)]):
        img = blobs(1, max(h, w))[0][:h, :w]
        iio.imwrite(d / f"scan{i}.png", (img * 255).astype(np.uint8))
    return d


def test_embed_store_holds_images_of_any_size_and_resumes(mixed_size_dir, tmp_path, monkeypatch):
    from skuld import PixelIndex
    from skuld.retrieval import EmbeddingStore

    model = tmp_path / "model.skuld"
    main(["fit", str(mixed_size_dir), "--out", str(model), "--max-iter", "1", "--crop-size", "32",
          "--image-size", "48", "--batch-size", "1", "--random-state", "0"])
    straight = tmp_path / "straight"
    assert main(["embed", str(model), str(mixed_size_dir), "--store", str(straight), "--jobs", "2"]) == 0
    store = EmbeddingStore(straight)
    assert store.complete and store.shapes == [(48, 64), (32, 32), (64, 48)]
    enc = skuld.load(model)
    for i in range(3):
        expected = enc.transform([str(mixed_size_dir / f"scan{i}.png")])[0]
        np.testing.assert_array_equal(store[i], expected)

    calls = interrupt_second_transform(monkeypatch)
    target = tmp_path / "resumed"
    assert main(["embed", str(model), str(mixed_size_dir), "--store", str(target)]) == 130
    assert EmbeddingStore(target).n_complete == 1 and not EmbeddingStore(target).complete
    calls["n"] = 10
    assert main(["embed", str(model), str(mixed_size_dir), "--store", str(target)]) == 0
    assert calls["n"] == 12  # only images 2 and 3 were embedded again
    resumed = EmbeddingStore(target)
    for i in range(3):
        np.testing.assert_array_equal(resumed[i], store[i])
    # A store is a sequence of (H, W, D) arrays: PixelIndex takes it as embeddings.
    idx = PixelIndex(stride=4).fit(resumed)
    assert idx.n_images_ == 3 and idx.n_vectors_ == 12 * 16 + 8 * 8 + 16 * 12


def test_embed_needs_exactly_one_destination(image_dir, tmp_path, capsys):
    model = tmp_path / "model.skuld"
    main(["fit", str(image_dir), "--out", str(model), "--max-iter", "1", "--crop-size", "32", "--image-size", "48",
          "--batch-size", "1", "--random-state", "0"])
    capsys.readouterr()
    assert main(["embed", str(model), str(image_dir)]) == 2
    assert "--store" in capsys.readouterr().err
    assert main(["embed", str(model), str(image_dir), "--out", str(tmp_path / "a"), "--stack", "b.npy"]) == 2


def test_index_with_parallel_decoding_equals_sequential(image_dir, tmp_path):
    from skuld import PixelIndex

    model = tmp_path / "model.skuld"
    main(["fit", str(image_dir), "--out", str(model), "--max-iter", "1", "--crop-size", "32", "--image-size", "48",
          "--batch-size", "1", "--random-state", "0"])
    assert main(["index", str(model), str(image_dir), "--out", str(tmp_path / "idx1"), "--stride", "2"]) == 0
    a = PixelIndex.load(tmp_path / "idx1")
    q = np.random.default_rng(0).normal(size=(2000, 32)).astype(np.float32)
    a.kneighbors(q, 3)  # FAISS's OpenMP threads are running in this process before the workers start
    assert main(["index", str(model), str(image_dir), "--out", str(tmp_path / "idx2"), "--stride", "2",
                 "--jobs", "2"]) == 0
    b = PixelIndex.load(tmp_path / "idx2")
    for x, y in zip(a.kneighbors(q, 3), b.kneighbors(q, 3)):
        np.testing.assert_array_equal(x, y)


def fit_model(images, out):
    assert main(["fit", str(images), "--out", str(out), "--max-iter", "1", "--crop-size", "32", "--image-size", "48",
                 "--batch-size", "1", "--random-state", "0", "--checkpoint-every", "5"]) == 0
    return out


def test_fit_writes_a_model_file_that_cannot_run_code_and_takes_several_globs(image_dir, tmp_path):
    from skuld.estimators.persistence import is_pickle, model_card

    model = tmp_path / "model.skuld"
    assert main(["fit", str(image_dir / "scan0.png"), str(image_dir / "scan[12].png"), "--out", str(model),
                 "--max-iter", "1", "--crop-size", "32", "--image-size", "48", "--batch-size", "1"]) == 0
    assert not is_pickle(model) and model_card(model)["class"] == "LocalDiscriminativeEncoder"
    assert isinstance(skuld.load(model), skuld.LocalDiscriminativeEncoder)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_a_pickled_model_runs_nothing_unless_allowed(image_dir, tmp_path, monkeypatch, capsys):
    import joblib

    monkeypatch.chdir(tmp_path)
    joblib.dump(_Payload(), tmp_path / "evil.joblib")
    for command in (["embed", "evil.joblib", str(image_dir), "--out", "e"], ["index", "evil.joblib", str(image_dir),
                                                                                "--out", "i"]):
        assert main(command) == 2
        assert "is a pickle, which runs code" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is a pickle"):
        skuld.load(tmp_path / "evil.joblib")
    with pytest.raises(ValueError, match="is a pickle"):
        skuld.TransferSegmenter(encoder=str(tmp_path / "evil.joblib")).fit(np.zeros((1, 32, 32)), np.eye(32, dtype=bool)[None])
    assert not (tmp_path / "pwned").exists()


def test_embeddings_of_another_model_are_refused_and_reruns_say_what_they_skipped(image_dir, tmp_path, capsys):
    a = fit_model(image_dir, tmp_path / "a.skuld")
    b = tmp_path / "b.skuld"
    assert main(["fit", str(image_dir), "--out", str(b), "--max-iter", "1", "--crop-size", "32", "--image-size", "48",
                 "--batch-size", "1", "--random-state", "1"]) == 0
    out, stack, store = str(tmp_path / "emb"), str(tmp_path / "emb.npy"), str(tmp_path / "store")
    for dest in (["--out", out], ["--stack", stack], ["--store", store]):
        assert main(["embed", str(a), str(image_dir), *dest]) == 0
        capsys.readouterr()
        assert main(["embed", str(a), str(image_dir), *dest]) == 0
        assert "skipped 3 image(s) already embedded" in capsys.readouterr().out
        assert main(["embed", str(b), str(image_dir), *dest]) == 2
        assert "another model" in capsys.readouterr().err
    assert main(["embed", str(b), str(image_dir), "--out", out, "--overwrite"]) == 0
    E = np.load(tmp_path / "emb" / "scan0.npy")
    np.testing.assert_allclose(E, skuld.load(b).transform([str(image_dir / "scan0.png")])[0], atol=1e-6)


def test_an_unwritable_output_fails_before_training(image_dir, tmp_path, capsys):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    assert main(["fit", str(image_dir), "--out", str(blocked / "model.skuld"), "--max-iter", "500"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the model" in err and "step" not in err


def test_query_answers_from_a_saved_index_and_refuses_another_model(image_dir, tmp_path, capsys):
    a = fit_model(image_dir, tmp_path / "a.skuld")
    assert main(["index", str(a), str(image_dir), "--out", str(tmp_path / "idx"), "--index", "Flat"]) == 0
    capsys.readouterr()
    assert main(["query", str(tmp_path / "idx"), str(a), str(image_dir / "scan1.png"), "20", "30", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "similarity\timage\trow\tcol" and len(lines) == 4
    sim, name, row, col = lines[1].split("\t")
    assert float(sim) > 0.999 and name.endswith("scan1.png") and (row, col) == ("20", "30")  # itself first
    b = tmp_path / "b.skuld"
    main(["fit", str(image_dir), "--out", str(b), "--max-iter", "1", "--crop-size", "32", "--image-size", "48",
          "--batch-size", "1", "--random-state", "1"])
    capsys.readouterr()
    assert main(["query", str(tmp_path / "idx"), str(b), str(image_dir / "scan1.png"), "20", "30"]) == 2
    assert "another model" in capsys.readouterr().err


def test_version():
    out = subprocess.run([sys.executable, "-m", "skuld", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"skuld {skuld.__version__}"


def test_embed_with_a_stride_and_its_record(tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for i, img in enumerate(blobs(2, 48)):
        iio.imwrite(images / f"{i}.png", (img * 255).astype(np.uint8))
    assert main(["fit", str(images), "--out", str(tmp_path / "m.skuld"), "--max-iter", "1", "--crop-size", "32",
                 "--image-size", "0", "--batch-size", "1", "--random-state", "0"]) == 0
    assert main(["embed", str(tmp_path / "m.skuld"), str(images), "--stack", str(tmp_path / "s.npy"),
                 "--stride", "4"]) == 0
    assert np.load(tmp_path / "s.npy").shape[:3] == (2, 12, 12)
    # The same output with another stride: refused, not mixed.
    assert main(["embed", str(tmp_path / "m.skuld"), str(images), "--stack", str(tmp_path / "s.npy")]) == 2
    assert "stride 4" in capsys.readouterr().err
