import pickle

import imageio.v3 as iio
import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from skuld import LocalDiscriminativeEncoder
from skuld.estimators.encoder import CHECKPOINT_NAME
from skuld.nn import SegmentationUNet

from ..helpers import TINY, blobs


def tiny(**kw):
    return LocalDiscriminativeEncoder(**{**TINY, **kw})


@pytest.fixture(scope="module")
def gray():
    return blobs(4, 48)


@pytest.fixture(scope="module")
def fitted(gray):
    return tiny().fit(gray)


def test_fit_transform_predict_shapes(fitted, gray):
    E = fitted.transform(gray[:2])
    assert E.shape == (2, 48, 48, 8) and E.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(E, axis=-1), 1, atol=1e-5)
    P = fitted.predict_proba(gray[:2])
    assert P.shape == (2, 48, 48, 4)
    np.testing.assert_allclose(P.sum(-1), 1, atol=1e-5)
    labels = fitted.predict(gray[:2])
    assert labels.shape == (2, 48, 48) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 4
    assert fitted.n_iter_ == 3 and fitted.n_channels_in_ == 1
    assert [r["stage"] for r in fitted.loss_history_] == ["pd", "ld", "ld"]
    assert all(np.isfinite(r["loss"]) for r in fitted.loss_history_)


def test_ragged_rgb_input_returns_lists_at_each_resolution():
    rgb = blobs(3, 64, channels=3)
    images = [rgb[0], rgb[1][:40, :56], (rgb[2] * 255).astype(np.uint8)]
    enc = tiny().fit(images)
    E = enc.transform(images)
    assert isinstance(E, list) and [e.shape for e in E] == [(64, 64, 8), (40, 56, 8), (64, 64, 8)]
    labels = enc.predict(images[1:2])
    assert isinstance(labels, list) and labels[0].shape == (40, 56)


def test_native_resolution_and_a_large_image_in_tiles(gray):
    enc = tiny(image_size=None).fit(gray)
    big = np.tile(gray[0], (25, 25))[:1100, :1200]  # 1100 x 1200 > one 1024 tile
    E = enc.transform(big[None])
    assert E.shape == (1, 1100, 1200, 8)
    np.testing.assert_allclose(np.linalg.norm(E[0, ::97, ::89], axis=-1), 1, atol=1e-5)


def test_same_random_state_gives_identical_embeddings(gray):
    a = tiny().fit(gray).transform(gray[:1])
    b = tiny().fit(gray).transform(gray[:1])
    np.testing.assert_array_equal(a, b)
    c = tiny(random_state=1).fit(gray).transform(gray[:1])
    assert not np.array_equal(a, c)


def test_fit_leaves_the_global_torch_rng_alone(gray):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    tiny().fit(gray)
    assert torch.equal(torch.rand(1), expected)


def test_unfitted_and_mismatched_input_errors(fitted, gray):
    with pytest.raises(NotFittedError):
        tiny().transform(gray)
    with pytest.raises(ValueError, match="fitted on 1-channel"):
        fitted.transform(blobs(1, 48, channels=3))
    with pytest.raises(ValueError, match="NaN"):
        fitted.transform(np.full((1, 48, 48), np.nan))
    with pytest.raises(ValueError, match="at least 32 x 32"):
        fitted.transform(np.zeros((1, 20, 64)))
    with pytest.raises(ValueError, match="at least 32 x 32"):
        tiny().fit(np.zeros((2, 16, 16)))
    with pytest.raises(ValueError, match="empty"):
        tiny().fit([])
    with pytest.raises(ValueError, match="shape"):
        tiny().fit(np.zeros((48, 48)))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"crop_size": 40}, "multiple of 16"),
        ({"crop_size": 48, "patch_grid": 5}, "divisible by patch_grid"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"mixup": (0.5, 2.0)}, "mixup"),
        ({"max_iter": 0}, "max_iter"),
        ({"precision": "fp8"}, "precision"),
        ({"color_jitter": (0.4, 0.4)}, "color_jitter"),
    ],
)
def test_bad_parameters_are_named(gray, params, match):
    with pytest.raises(ValueError, match=match):
        tiny(**params).fit(gray)


def test_cuda_without_gpu_is_a_clear_error(gray):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        tiny(device="cuda").fit(gray)


def test_clone_and_params_round_trip():
    enc = tiny(rotation=0.0, rot90=False)
    params = enc.get_params()
    assert params["rotation"] == 0.0 and params["crop_scale"] == (0.9, 1.0)
    twin = clone(enc)
    assert twin.get_params() == params and twin is not enc
    twin.set_params(max_iter=7)
    assert twin.max_iter == 7 and enc.max_iter == 3


def test_pickle_and_joblib_round_trip_on_cpu(fitted, gray, tmp_path):
    path = tmp_path / "enc.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.transform(gray[:1]), fitted.transform(gray[:1]))
    assert loaded.n_iter_ == fitted.n_iter_ and loaded.device_.type == "cpu"
    again = pickle.loads(pickle.dumps(loaded))
    assert all(v.device.type == "cpu" for v in again.model_.state_dict().values())


def test_warm_start_and_partial_fit_continue_training(gray):
    enc = tiny(warm_start=True).fit(gray)
    enc.fit(gray)
    assert enc.n_iter_ == 6 and len(enc.loss_history_) == 6
    pf = tiny()
    pf.partial_fit(gray)  # 4 images, batch 1 -> 2 steps
    assert pf.n_iter_ == 2
    pf.partial_fit(gray)
    assert pf.n_iter_ == 4


def test_warm_start_after_a_joblib_round_trip_keeps_adam_state(gray, tmp_path):
    enc = tiny(warm_start=True, max_iter=2).fit(gray)
    joblib.dump(enc, tmp_path / "e.joblib")
    enc.fit(gray)
    loaded = joblib.load(tmp_path / "e.joblib")
    loaded.fit(gray)
    np.testing.assert_allclose(loaded.transform(gray[:1]), enc.transform(gray[:1]), atol=1e-5)


class StopAt:
    """A scikit-learn callback that asks training to stop, or raises Ctrl-C, at a step."""

    def __init__(self, step, interrupt=False):
        self.step, self.interrupt, self.seen = step, interrupt, []

    def setup(self, estimator, context):
        pass

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context):
        pass

    def on_fit_task_end(self, estimator, context, *, metadata=None):
        if context.task_name != "step":
            return False
        self.seen.append(metadata["loss"])
        if len(self.seen) == self.step:
            if self.interrupt:
                raise KeyboardInterrupt
            return True
        return False


def test_callbacks_see_every_step_and_can_stop_training(gray):
    cb = StopAt(2)
    enc = tiny(max_iter=5).set_callbacks(cb)
    enc.fit(gray)
    assert enc.n_iter_ == 2 and len(cb.seen) == 2 and all(np.isfinite(cb.seen))


def test_interrupted_fit_resumes_to_the_same_model(gray, tmp_path):
    straight = tiny(max_iter=5).fit(gray)
    enc = tiny(max_iter=5, checkpoint_dir=str(tmp_path), checkpoint_every=100).set_callbacks(StopAt(3, interrupt=True))
    with pytest.raises(KeyboardInterrupt):
        enc.fit(gray)
    assert (tmp_path / CHECKPOINT_NAME).exists() and enc.n_iter_ == 3
    resumed = tiny(max_iter=5, checkpoint_dir=str(tmp_path)).fit(gray)
    assert resumed.n_iter_ == 5
    assert [r["step"] for r in resumed.loss_history_] == list(range(5))
    np.testing.assert_array_equal(resumed.transform(gray[:1]), straight.transform(gray[:1]))


def test_a_checkpoint_from_other_parameters_is_not_silently_reused(gray, tmp_path):
    tiny(checkpoint_dir=str(tmp_path)).fit(gray)
    with pytest.raises(ValueError, match="n_clusters"):
        tiny(checkpoint_dir=str(tmp_path), n_clusters=5).fit(gray)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        tiny(checkpoint_dir=str(tmp_path)).fit(gray)


def test_fit_from_files_with_loader_workers(tmp_path, gray):
    for i, img in enumerate(gray):
        iio.imwrite(tmp_path / f"{i}.png", (img * 255).astype(np.uint8))
    enc = tiny(num_workers=2).fit(str(tmp_path))
    assert enc.n_iter_ == 3
    E = enc.transform(sorted(str(p) for p in tmp_path.glob("*.png"))[:2])
    assert isinstance(E, list) and E[0].shape == (48, 48, 8)
    (tmp_path / "9.png").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="9.png"):
        enc.transform([str(tmp_path / "9.png")])


def test_exported_encoder_initialises_a_unet(fitted):
    encoder = fitted.export_encoder()
    unet = SegmentationUNet(n_classes=2, encoder=encoder)
    for k, v in fitted.model_.encoder.state_dict().items():
        assert torch.equal(unet.encoder.state_dict()[k], v.cpu())
    assert not encoder.training
    assert unet(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    mean, std = fitted.normalization_stats()
    assert mean == (0.5,) and std == (0.5,)


def test_verbose_prints_progress(gray, capsys):
    tiny(verbose=1).fit(gray)
    assert "step 3/3" in capsys.readouterr().err


def test_progress_bar_callback_runs(gray):
    pytest.importorskip("rich")
    from sklearn.callback import ProgressBar

    enc = tiny().set_callbacks(ProgressBar())
    enc.fit(gray)
    assert enc.n_iter_ == 3


def test_a_model_set_to_cuda_runs_on_the_cpu_when_there_is_no_gpu(fitted, gray):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    twin = pickle.loads(pickle.dumps(fitted))
    twin.set_params(device="cuda")  # as if it had been fitted on a GPU machine
    with pytest.warns(RuntimeWarning, match="no CUDA GPU"):
        E = twin.transform(gray[:1])
    np.testing.assert_allclose(E, fitted.transform(gray[:1]), atol=1e-6)


def test_a_too_small_image_file_is_named_during_training(tmp_path, gray):
    iio.imwrite(tmp_path / "a.png", (gray[0] * 255).astype(np.uint8))
    iio.imwrite(tmp_path / "tiny.png", np.zeros((12, 40), np.uint8))
    with pytest.raises(ValueError, match=r"tiny.png is 12 x 40 pixels"):
        tiny(max_iter=8).fit(str(tmp_path))


def test_interruption_inside_a_step_keeps_the_last_completed_step(gray, tmp_path, monkeypatch):
    """Ctrl-C after a step's forward pass (which moved the batch-norm statistics) but before its
    update: the checkpoint must still be exactly the previous step."""
    from skuld.pretraining import LocalDiscriminationTask

    straight = tiny(max_iter=5).fit(gray)
    real, calls = LocalDiscriminationTask.loss, []

    def interrupted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(LocalDiscriminationTask, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny(max_iter=5, checkpoint_dir=str(tmp_path), checkpoint_every=100).fit(gray)
    monkeypatch.setattr(LocalDiscriminationTask, "loss", real)
    resumed = tiny(max_iter=5, checkpoint_dir=str(tmp_path)).fit(gray)
    np.testing.assert_array_equal(resumed.transform(gray[:1]), straight.transform(gray[:1]))


def test_a_checkpoint_of_other_images_is_not_resumed(gray, tmp_path):
    tiny(checkpoint_dir=str(tmp_path)).fit(gray)
    with pytest.raises(ValueError, match="other values of data"):
        tiny(checkpoint_dir=str(tmp_path)).fit(gray[::-1].copy())
    tiny(checkpoint_dir=str(tmp_path)).fit(gray)  # the same images: resumed (here: already done)


def test_a_warm_start_keeps_the_fitted_crop_size(gray, monkeypatch):
    import skuld.estimators.encoder as encoder_module

    seen, real = [], encoder_module.LocalDiscriminationTask

    def recording(images, config, *args, **kwargs):
        seen.append(config.crop_size)
        return real(images, config, *args, **kwargs)

    monkeypatch.setattr(encoder_module, "LocalDiscriminationTask", recording)
    enc = tiny(max_iter=1).fit(gray)
    enc.set_params(crop_size=48, warm_start=True).fit(gray)
    enc.partial_fit(gray)
    assert seen == [32, 32, 32] and enc.crop_size_ == 32


def test_a_fresh_fit_of_an_unpickled_encoder_starts_from_scratch(gray):
    enc = pickle.loads(pickle.dumps(tiny(max_iter=2).fit(gray)))
    np.testing.assert_array_equal(enc.fit(gray).transform(gray[:1]), tiny(max_iter=2).fit(gray).transform(gray[:1]))


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_a_crafted_checkpoint_in_the_checkpoint_dir_runs_nothing(gray, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": 2, "kind": "pretraining", "model": _Payload()}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        tiny(checkpoint_dir=str(tmp_path)).fit(gray)
    assert not (tmp_path / "pwned").exists()


def _folder_with_a_truncated_file(tmp_path, gray):
    for i, img in enumerate(gray[:3]):
        iio.imwrite(tmp_path / f"{i}.png", (img * 255).astype(np.uint8))
    good = (tmp_path / "0.png").read_bytes()
    (tmp_path / "9-truncated.png").write_bytes(good[: len(good) // 2])
    return tmp_path


def test_every_file_is_checked_before_the_first_step(tmp_path, gray, monkeypatch):
    folder = _folder_with_a_truncated_file(tmp_path, gray)
    monkeypatch.setattr("skuld.estimators.encoder.train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=r"1 of 4 images cannot be used \(on_error=\"skip\".*9-truncated\.png"):
        tiny(checkpoint_dir=tmp_path / "ckpt").fit(str(folder))
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_on_error_skip_leaves_unreadable_files_out_with_a_warning(tmp_path, gray):
    folder = _folder_with_a_truncated_file(tmp_path, gray)
    with pytest.warns(UserWarning, match=r"leaving out 1 of 4 images.*9-truncated\.png"):
        enc = tiny(on_error="skip").fit(str(folder))
    assert enc.n_iter_ == enc.max_iter


def test_transform_can_return_every_stride_th_pixel_in_half_precision(fitted, gray):
    full = fitted.transform(gray[:2])
    strided = fitted.transform(gray[:2], stride=3, dtype="float16")
    assert strided.shape == (2, 16, 16, full.shape[-1]) and strided.dtype == np.float16
    np.testing.assert_allclose(strided.astype(np.float32), full[:, ::3, ::3], atol=2e-3)
    ragged = fitted.transform([gray[0], gray[1][:40, :35]], stride=4)
    assert [e.shape[:2] for e in ragged] == [(12, 12), (10, 9)]
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        fitted.transform(gray[:1], stride=0)
    with pytest.raises(ValueError, match="dtype must be float32 or float16"):
        fitted.transform(gray[:1], dtype="int8")


def test_outputs_beyond_the_memory_guard_are_refused_before_any_work(fitted, gray, monkeypatch):
    monkeypatch.setattr("skuld.inference.memory_limit", lambda: 48 * 48 * 4 * fitted.embedding_dim)
    monkeypatch.setattr("skuld.inference.infer_image", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(MemoryError, match=r"outputs would take .* GiB.*X\[0\], 48 x 48.*stride=2.*float16"):
        fitted.transform(gray[:2])


def test_an_unwritable_checkpoint_dir_is_refused_before_the_first_step(tmp_path, gray, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr("skuld.estimators.encoder.train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=r"cannot write the checkpoints to .*a-file/ckpt"):
        tiny(checkpoint_dir=blocker / "ckpt").fit(gray)
