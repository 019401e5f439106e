import json

import numpy as np
import pytest

from skuld.retrieval import EmbeddingStore


def test_round_trip_of_mixed_sizes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(h, w, 3)).astype(np.float32) for h, w in [(2, 5), (7, 1), (3, 3)]]
    store = EmbeddingStore.create(tmp_path / "s", ["a", "b", "c"], [a.shape[:2] for a in arrays], dim=3)
    assert store.n_complete == 0 and not store.complete
    for i, a in enumerate(arrays):
        store.write(i, a)
    reader = EmbeddingStore(tmp_path / "s")
    assert reader.complete and reader.paths == ["a", "b", "c"] and len(reader) == 3
    for a, b in zip(arrays, reader):
        np.testing.assert_array_equal(a, b)
    assert isinstance(reader[0].base, np.memmap) or isinstance(reader[0], np.memmap)
    np.testing.assert_array_equal(reader[-1], arrays[-1])
    with pytest.raises(IndexError):
        reader[3]
    with pytest.raises(ValueError, match="read-only"):
        reader.write(0, arrays[0])


def test_float16_and_write_order_and_shape_errors(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", ["a", "b"], [(2, 2), (1, 3)], dim=4, dtype=np.float16)
    with pytest.raises(ValueError, match="in order"):
        store.write(1, np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match=r"should be \(2, 2, 4\)"):
        store.write(0, np.zeros((2, 3, 4)))
    store.write(0, np.ones((2, 2, 4)))
    assert EmbeddingStore(tmp_path / "s").n_complete == 1
    assert EmbeddingStore(tmp_path / "s")[0].dtype == np.float16
    with pytest.raises(ValueError, match="float32 or float16"):
        EmbeddingStore.create(tmp_path / "t", ["a"], [(1, 1)], dim=1, dtype=np.int8)


def test_corrupt_or_missing_metadata_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an embedding store"):
        EmbeddingStore(tmp_path)
    EmbeddingStore.create(tmp_path / "s", ["a"], [(2, 2)], dim=2)
    (tmp_path / "s" / "images.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        EmbeddingStore(tmp_path / "s")
    EmbeddingStore.create(tmp_path / "s", ["a"], [(2, 2)], dim=2)
    meta = json.loads((tmp_path / "s" / "images.json").read_text())
    meta["shapes"] = [[3, 3]]
    (tmp_path / "s" / "images.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="describes"):
        EmbeddingStore(tmp_path / "s")


def test_recreating_replaces_an_old_store(tmp_path):
    old = EmbeddingStore.create(tmp_path / "s", ["a"], [(1, 1)], dim=2)
    old.write(0, np.ones((1, 1, 2)))
    new = EmbeddingStore.create(tmp_path / "s", ["x", "y"], [(2, 1), (1, 1)], dim=2)
    assert new.n_complete == 0 and new.paths == ["x", "y"]
