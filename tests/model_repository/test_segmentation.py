"""Segmentation post-processing in numpy equals torch's interpolation."""

from __future__ import annotations

import numpy as np
import pytest

from vlpserve.model_repository.runtime.segmentation import bilinear_resize, first_argmax, segment


@pytest.mark.parametrize(
    ("size_in", "size_out"),
    [((14, 14), (224, 224)), ((224, 224), (300, 451)), ((224, 224), (97, 61)), ((7, 9), (7, 9))],
)
def test_bilinear_resize_equals_torch(size_in, size_out) -> None:
    import torch

    rng = np.random.default_rng(0)
    values = rng.standard_normal((3, *size_in)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(values)[None], size=size_out, mode="bilinear", align_corners=False
    )[0].numpy()
    np.testing.assert_allclose(bilinear_resize(values, *size_out), expected, atol=1e-4)


def test_segment_shapes_and_sums() -> None:
    rng = np.random.default_rng(0)
    result = segment(
        image_embeds=rng.standard_normal(8).astype(np.float32),
        group_embeds=rng.standard_normal((4, 8)).astype(np.float32),
        grouping=rng.random((4, 14, 14)).astype(np.float32),
        text_embeds=rng.standard_normal((3, 8)).astype(np.float32),
        logit_scale=10.0,
        model_size=(224, 224),
        image_size=(50, 70),
    )
    assert result.label_map.shape == (50, 70) and result.label_map.dtype == np.int32
    assert set(np.unique(result.label_map)) <= {0, 1, 2}
    assert result.fractions.sum() == pytest.approx(1.0)
    assert result.scores.sum() == pytest.approx(1.0)


def test_composed_matrices_equal_two_resizes() -> None:
    from vlpserve.model_repository.runtime.segmentation import bilinear_matrix

    rng = np.random.default_rng(1)
    grid = rng.standard_normal((5, 14, 14)).astype(np.float32)
    twice = bilinear_resize(bilinear_resize(grid, 224, 224), 300, 451)
    rows = bilinear_matrix(224, 300) @ bilinear_matrix(14, 224)
    cols = bilinear_matrix(224, 451) @ bilinear_matrix(14, 224)
    np.testing.assert_allclose(rows @ grid @ cols.T, twice, atol=1e-4)


def test_first_argmax_equals_numpy_with_ties() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, size=(7, 33, 50)).astype(np.float32)  # many ties
    got = first_argmax(values)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, values.argmax(axis=0))
    one = rng.standard_normal((1, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(first_argmax(one), np.zeros((5, 6), dtype=np.int32))
