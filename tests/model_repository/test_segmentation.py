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
    assert result.label_map.shape == (50, 70) and result.label_map.dtype == np.uint8
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


def _whole_image(inputs: dict, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The label map and fractions as computed before bands: every label's logits over the
    whole image at once (labels x 4 bytes per pixel), then the argmax."""
    from vlpserve.model_repository.runtime.segmentation import bilinear_matrix, grid_logits

    on_grid = grid_logits(
        inputs["group_embeds"], inputs["grouping"], inputs["text_embeds"], inputs["logit_scale"]
    )
    labels, grid_h, grid_w = on_grid.shape
    rows = bilinear_matrix(224, image_size[0]) @ bilinear_matrix(grid_h, 224)
    cols = bilinear_matrix(224, image_size[1]) @ bilinear_matrix(grid_w, 224)
    label_map = first_argmax(rows @ on_grid @ cols.T)
    return label_map, np.bincount(label_map.ravel(), minlength=labels) / label_map.size


@pytest.mark.parametrize(
    ("labels", "image_size", "band_bytes", "dtype"),
    [
        (64, (1531, 977), 1 << 20, np.uint8),  # bands of 4 rows, the last one short
        (3, (301, 4000), 100_000, np.uint8),  # bands of 2 rows
        (300, (257, 129), 1 << 20, np.uint16),  # more labels than uint8 holds
        (7, (64, 48), 1 << 30, np.uint8),  # one band
    ],
)
def test_banded_label_map_equals_the_whole_image_one(labels, image_size, band_bytes, dtype):
    rng = np.random.default_rng(labels)
    inputs = {
        "image_embeds": rng.standard_normal(8).astype(np.float32),
        "group_embeds": rng.standard_normal((8, 8)).astype(np.float32),
        "grouping": rng.random((8, 14, 14)).astype(np.float32),
        "text_embeds": rng.standard_normal((labels, 8)).astype(np.float32),
        "logit_scale": 10.0,
    }
    result = segment(
        **inputs, model_size=(224, 224), image_size=image_size, dtype=dtype, band_bytes=band_bytes
    )
    expected, fractions = _whole_image(inputs, image_size)
    assert result.label_map.dtype == dtype and result.label_map.shape == image_size
    np.testing.assert_array_equal(result.label_map, expected)
    np.testing.assert_allclose(result.fractions, fractions, rtol=1e-6)
    assert len(np.unique(expected)) > 1  # not a trivially constant map


def test_a_label_map_type_must_hold_the_labels() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="300 labels do not fit a uint8"):
        segment(
            image_embeds=rng.standard_normal(8).astype(np.float32),
            group_embeds=rng.standard_normal((4, 8)).astype(np.float32),
            grouping=rng.random((4, 14, 14)).astype(np.float32),
            text_embeds=rng.standard_normal((300, 8)).astype(np.float32),
            logit_scale=10.0,
            model_size=(224, 224),
            image_size=(50, 70),
        )
