import imageio.v3 as iio
import numpy as np
import pytest

from skuld.io import ImageCollection, ImageReadError, atomic_write, expand_paths, read_image, to_float_image


def test_integer_images_are_scaled_by_their_dtype():
    assert to_float_image(np.full((4, 4), 255, np.uint8)).max() == 1.0
    assert to_float_image(np.full((4, 4), 65535, np.uint16)).max() == 1.0
    assert to_float_image(np.ones((4, 4), bool)).dtype == np.float32
    assert to_float_image(np.zeros((4, 4, 3), np.float64)).shape == (4, 4, 3)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((4, 4), np.nan, np.float32), "NaN or infinity"),
        (np.full((4, 4), np.inf, np.float32), "NaN or infinity"),
        (np.zeros((4,), np.float32), r"shape \(H, W\)"),
        (np.zeros((4, 4, 2), np.float32), "2 channels"),
        (np.zeros((4, 4, 5), np.float32), "5 channels"),
        (np.zeros((0, 4), np.float32), "empty"),
        (np.zeros((4, 4), np.int16), "signed integer"),
    ],
)
def test_bad_images_get_errors_that_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        to_float_image(bad)


def test_collection_errors():
    with pytest.raises(ValueError, match="empty"):
        ImageCollection([])
    with pytest.raises(ValueError, match="empty"):
        ImageCollection(np.zeros((0, 8, 8)))
    with pytest.raises(ValueError, match=r"got an array of shape \(8, 8\)"):
        ImageCollection(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="mixes gray and RGB"):
        ImageCollection([np.zeros((8, 8)), np.zeros((8, 8, 3))])
    with pytest.raises(ValueError, match="fitted on 3-channel"):
        ImageCollection(np.zeros((2, 8, 8)), n_channels=3)
    with pytest.raises(ValueError, match=r"X\[1\] contains NaN"):
        ImageCollection([np.zeros((8, 8)), np.full((8, 8), np.nan)])
    with pytest.raises(TypeError, match="must be an array"):
        ImageCollection(42)


def test_files_directory_and_glob(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    iio.imwrite(tmp_path / "b.png", rgba)
    iio.imwrite(tmp_path / "a.png", np.full((8, 8), 100, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    paths = expand_paths(tmp_path)
    assert [p.split("/")[-1] for p in paths] == ["a.png", "b.png"]
    assert expand_paths(str(tmp_path / "*.png")) == paths
    col = ImageCollection(str(tmp_path))
    assert col.from_files and col.n_channels == 1 and len(col) == 2
    assert col[1].shape == (8, 8, 1)  # RGBA converted to the collection's gray, alpha dropped
    assert ImageCollection(paths, n_channels=3)[0].shape == (8, 8, 3)
    with pytest.raises(FileNotFoundError):
        expand_paths(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image files"):
        expand_paths(str(tmp_path / "*.jpg"))


def test_corrupt_and_missing_files_name_the_path(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageReadError, match="broken.png"):
        ImageCollection([str(bad)])
    good = tmp_path / "ok.png"
    iio.imwrite(good, np.zeros((8, 8), np.uint8))
    col = ImageCollection([str(good), str(tmp_path / "gone.png")])
    with pytest.raises(ImageReadError, match="gone.png"):
        col[1]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.bin"
    target.write_text("old")

    def failing(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]
    atomic_write(target, lambda tmp: open(tmp, "w").write("new"))
    assert target.read_text() == "new"


def test_shape_of_files_comes_from_the_header(tmp_path):
    iio.imwrite(tmp_path / "a.png", np.zeros((13, 21), np.uint8))
    col = ImageCollection([str(tmp_path / "a.png")])
    assert col.shape(0) == (13, 21) == col[0].shape[:2]
    assert ImageCollection(np.zeros((2, 9, 11))).shape(1) == (9, 11)


def test_single_frame_files_read_as_two_dimensional(tmp_path, monkeypatch):
    """Pillow returns some one-frame GIFs (DRIVE's masks) as (1, H, W): that is an (H, W) image."""
    path = tmp_path / "m.gif"
    path.write_bytes(b"stand-in")
    mask = np.zeros((1, 30, 20), np.uint8)
    mask[0, 5:10, 3:8] = 255
    monkeypatch.setattr(iio, "imread", lambda *a, **k: mask)
    out = read_image(path)
    assert out.shape == (30, 20)
    np.testing.assert_array_equal(out, mask[0])


def test_iter_images_decodes_ahead_in_worker_processes_in_order(tmp_path):
    import imageio.v3 as iio

    from skuld.io import ImageCollection, ImageReadError

    rng = np.random.default_rng(0)
    for i in range(5):
        iio.imwrite(tmp_path / f"{i}.png", rng.integers(0, 255, (8 + i, 9), dtype=np.uint8))
    images = ImageCollection(str(tmp_path))
    sequential = list(images.iter_images())
    parallel = list(images.iter_images([4, 1, 3], n_jobs=2))
    assert [i for i, _ in parallel] == [4, 1, 3]
    for i, img in parallel:
        np.testing.assert_array_equal(img, sequential[i][1])
    (tmp_path / "2.png").write_bytes(b"broken")
    with pytest.raises(ImageReadError, match="2.png"):
        list(ImageCollection(str(tmp_path)).iter_images(n_jobs=2))
