"""What ``Client.segment`` returns, and a colour overlay to look at it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Distinct, readable colours (Tableau 10, then more); label i gets PALETTE[i % len].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
)  # fmt: skip


@dataclass(frozen=True)
class Segmentation:
    """A label map over the original image, with per-label figures.

    Attributes:
        label_map: (H, W) int32, the index into ``labels`` of each pixel.
        labels: the labels as the caller gave them (before any template).
        scores: image-level probability of each label (softmax over labels).
        fractions: share of the image's pixels given to each label.
        image: the encoded image that was segmented.
    """

    label_map: np.ndarray
    labels: list[str]
    scores: np.ndarray
    fractions: np.ndarray
    image: bytes

    def mask(self, label: str) -> np.ndarray:
        """Boolean (H, W) mask of one label."""
        return np.asarray(self.label_map == self.labels.index(label))

    def overlay_png(self, *, alpha: float = 0.5, legend: bool = True) -> bytes:
        """PNG of the image with each label's region tinted in its colour, and a legend."""
        from PIL import Image, ImageDraw

        if not 0.0 <= alpha <= 1.0:
            raise ValueError("alpha must be between 0 and 1")
        base = Image.open(io.BytesIO(self.image)).convert("RGB")
        palette = np.array([PALETTE[i % len(PALETTE)] for i in range(len(self.labels))])
        colours = Image.fromarray(palette[self.label_map].astype(np.uint8), "RGB")
        blended = Image.blend(base, colours, alpha)
        if legend:
            draw = ImageDraw.Draw(blended)
            shown = [i for i in np.argsort(-self.fractions) if self.fractions[i] > 0]
            for row, index in enumerate(shown):
                y = 4 + 14 * row
                draw.rectangle((4, y, 14, y + 10), fill=tuple(palette[index]), outline=(0, 0, 0))
                text = f"{self.labels[index]} {self.fractions[index]:.0%}"
                draw.text((18, y - 1), text, fill=(255, 255, 255), stroke_width=1,
                          stroke_fill=(0, 0, 0))  # fmt: skip
        buffer = io.BytesIO()
        blended.save(buffer, format="PNG")
        return buffer.getvalue()

    def save_overlay(self, path: Path | str, **options: object) -> Path:
        """Write ``overlay_png()`` to ``path``."""
        path = Path(path)
        path.write_bytes(self.overlay_png(**options))  # type: ignore[arg-type]
        return path
