"""The pixel id table: FAISS ids <-> (image, row, col), for strided grids and masks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skuld.retrieval import MISSING, PixelIds, count_pixels, select_pixels


@st.composite
def collections(draw):
    images = []
    for _ in range(draw(st.integers(1, 4))):
        h, w, stride = draw(st.integers(1, 20)), draw(st.integers(1, 20)), draw(st.integers(1, 4))
        mask = None
        if draw(st.booleans()):
            mask = np.asarray(draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))).reshape(h, w)
        images.append((h, w, stride, mask))
    return images


@settings(max_examples=60, deadline=None)
@given(images=collections())
def test_every_id_maps_to_its_pixel_and_back(images):
    table, expected = PixelIds(), []
    for i, (h, w, stride, mask) in enumerate(images):
        rows, cols = np.mgrid[0:h, 0:w]
        e = np.stack([np.full((h, w), i), rows, cols], -1).astype(np.float32)  # each pixel's own location
        vectors, entry = select_pixels(e, mask, stride)
        assert len(vectors) == count_pixels(h, w, mask, stride) == entry.count
        assert table.append(entry) == i
        expected.append(vectors.astype(np.int64))
    expected = np.concatenate(expected)
    ids = np.arange(table.n_vectors)
    np.testing.assert_array_equal(table.locations(ids), expected)
    if len(ids):
        np.testing.assert_array_equal(table.ids_of(expected), ids)
    assert (table.locations([MISSING, -5]) == MISSING).all()
    again = PixelIds.from_arrays(table.arrays())
    np.testing.assert_array_equal(again.locations(ids), expected)


def test_pixels_that_are_not_indexed_are_named():
    table = PixelIds()
    table.append(select_pixels(np.zeros((6, 6, 1)), None, 2)[1])
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    table.append(select_pixels(np.zeros((4, 4, 1)), mask, 1)[1])
    with pytest.raises(KeyError, match="stride 2"):
        table.ids_of([[0, 1, 0]])
    with pytest.raises(KeyError, match="outside its mask"):
        table.ids_of([[1, 0, 0]])
    with pytest.raises(KeyError, match="not in the index"):
        table.ids_of([[2, 0, 0]])
    assert table.ids_of([[1, 1, 2]]).tolist() == [9]


def test_a_crafted_id_table_is_refused():
    with pytest.raises(ValueError, match="shapes must be"):
        PixelIds.from_arrays({"shapes": np.zeros((2, 3), np.int64), "pixels": np.zeros(0, np.int64)})
    with pytest.raises(ValueError, match="invalid entry"):
        PixelIds.from_arrays({"shapes": np.array([[4, 4, 1, 10]]), "pixels": np.arange(3)})
    with pytest.raises(ValueError, match="invalid entry"):
        PixelIds.from_arrays({"shapes": np.array([[0, 4, 1, -1]]), "pixels": np.zeros(0, np.int64)})
