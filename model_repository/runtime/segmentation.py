"""GroupViT zero-shot segmentation post-processing, in numpy.

Hugging Face's ``GroupViTModel(output_segmentation=True)`` resizes the patch-to-group
assignment to the input pixels, then computes per-label logits as
``(group_embeds @ text_embeds.T * s).T @ grouping * s`` (s = exp(logit_scale), applied twice,
as there). Both steps are linear, so the logits are computed on the patch grid and resized
afterwards: same numbers, a fraction of the work. ``bilinear_resize`` is
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``; ``segment``
composes both resizes into one matrix per axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _axis_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = np.float32(size_in / size_out)
    src = (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    low = np.minimum(src.astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = (src - low).astype(np.float32)
    return low, high, frac


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) matrix M with M @ x = 1-D bilinear resize of x (torch's rule)."""
    low, high, frac = _axis_weights(size_in, size_out)
    matrix = np.zeros((size_out, size_in), dtype=np.float32)
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, low), 1 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def bilinear_resize(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (channels, h, w) to (channels, height, width), half-pixel centres, no antialias."""
    values = values.astype(np.float32, copy=False)
    low, high, frac = _axis_weights(values.shape[1], height)
    rows = values[:, low, :] * (1 - frac)[None, :, None] + values[:, high, :] * frac[None, :, None]
    low, high, frac = _axis_weights(values.shape[2], width)
    return np.asarray(rows[:, :, low] * (1 - frac) + rows[:, :, high] * frac, dtype=np.float32)


def first_argmax(values: np.ndarray, dtype: np.dtype | type = np.int32) -> np.ndarray:
    """``values.argmax(axis=0)`` as ``dtype`` (ties to the first), one pass per label:
    numpy's argmax over the first axis of a (labels, H, W) array strides across memory and
    takes 2x as long for a photo-sized map."""
    best = values[0].copy()
    index = np.zeros(best.shape, dtype=dtype)
    for label in range(1, values.shape[0]):
        better = values[label] > best
        np.copyto(best, values[label], where=better)
        index[better] = label
    return index


@dataclass(frozen=True)
class Segment:
    """One image's segmentation: label index per pixel, image-level scores, pixel fractions."""

    label_map: np.ndarray  # (H, W) of the label map type (uint8 up to 256 labels)
    scores: np.ndarray  # (labels,) float32, softmax over labels of the image embedding
    fractions: np.ndarray  # (labels,) float32, share of pixels per label


def grid_logits(
    group_embeds: np.ndarray, grouping: np.ndarray, text_embeds: np.ndarray, logit_scale: float
) -> np.ndarray:
    """Per-label logits on the patch grid (labels, grid_h, grid_w)."""
    scale = np.float32(logit_scale)
    per_group = (group_embeds @ text_embeds.T) * scale  # (groups, labels)
    groups, grid_h, grid_w = grouping.shape
    on_grid = (per_group.T @ grouping.reshape(groups, -1)) * scale
    return np.asarray(on_grid.reshape(-1, grid_h, grid_w), dtype=np.float32)


def segment_logits(
    group_embeds: np.ndarray,
    grouping: np.ndarray,
    text_embeds: np.ndarray,
    logit_scale: float,
    model_size: tuple[int, int],
) -> np.ndarray:
    """Per-label logits (labels, H_model, W_model), as Hugging Face's segmentation_logits."""
    on_grid = grid_logits(group_embeds, grouping, text_embeds, logit_scale)
    return bilinear_resize(on_grid, *model_size)


BAND_BYTES = 32 * 2**20  # the logits of one band of rows at the image's size


def segment(
    *,
    image_embeds: np.ndarray,
    group_embeds: np.ndarray,
    grouping: np.ndarray,
    text_embeds: np.ndarray,
    logit_scale: float,
    model_size: tuple[int, int],
    image_size: tuple[int, int],
    dtype: np.dtype | type = np.uint8,
    band_bytes: int = BAND_BYTES,
) -> Segment:
    """Label map at ``image_size`` (height, width) for one image and its label embeddings,
    of ``dtype`` (which must hold the label count).

    Both resizes (grid -> model input -> image) are linear maps per axis, so they are
    composed into one matrix per axis and applied with two matrix products, one band of rows
    at a time: the (labels, H, W) logits of a whole photo would take labels x 4 bytes per
    pixel (10 GB for 64 labels on 40 Mpx); a band holds ``band_bytes``. Each pixel's logits
    are the same products as over the whole image, so the map is the same.
    """
    on_grid = grid_logits(group_embeds, grouping, text_embeds, logit_scale)
    labels, grid_h, grid_w = on_grid.shape
    if labels > np.iinfo(dtype).max + 1:
        raise ValueError(f"{labels} labels do not fit a {np.dtype(dtype).name} label map")
    height, width = image_size
    rows = bilinear_matrix(model_size[0], height) @ bilinear_matrix(grid_h, model_size[0])
    cols = bilinear_matrix(model_size[1], width) @ bilinear_matrix(grid_w, model_size[1])
    band = max(1, band_bytes // (labels * width * 4))
    label_map = np.empty((height, width), dtype=dtype)
    counts = np.zeros(labels, dtype=np.int64)
    for top in range(0, height, band):
        logits = rows[top : top + band] @ on_grid @ cols.T  # (labels, band, W)
        part = first_argmax(logits, dtype)
        label_map[top : top + band] = part
        counts += np.bincount(part.ravel(), minlength=labels)
    fractions = counts / label_map.size
    image_logits = (text_embeds @ image_embeds) * np.float32(logit_scale)
    exp = np.exp(image_logits - image_logits.max())
    return Segment(
        label_map=label_map,
        scores=(exp / exp.sum()).astype(np.float32),
        fractions=fractions.astype(np.float32),
    )
