"""GroupViT: the text graph as CLIP's; an image graph that also returns what segmentation
needs (projected group embeddings and the patch-to-group assignment).

The grouping is combined across the grouping stages as Hugging Face's
``get_grouping_from_attentions`` does, but returned on the patch grid: resizing it to pixels
is linear, so the server resizes the (much smaller) per-label logits instead.
"""

from __future__ import annotations

import logging
from typing import Any

from vlpserve.contract import GROUP_EMBEDS, GROUPING, IMAGE_EMBEDS, Family
from vlpserve.export.clip import export_dual_encoder, image_graph_spec, load_reference
from vlpserve.export.common import ExportOptions
from vlpserve.export.report import ExportReport
from vlpserve.progress import ProgressFn, no_progress

logger = logging.getLogger(__name__)


def patch_grid(vision: Any) -> tuple[int, int]:
    """(height, width) of the patch grid the grouping is laid out on."""
    side = int(vision.image_size) // int(vision.patch_size)
    return side, side


def _image_tower() -> type:
    import torch

    class GroupViTImageTower(torch.nn.Module):
        """pixel_values -> image_embeds, group_embeds (both L2-normalised), grouping."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model
            self.grid = patch_grid(model.config.vision_config)

        def forward(self, pixel_values: Any) -> tuple[Any, Any, Any]:
            normalize = torch.nn.functional.normalize
            projection = self.model.visual_projection
            out = self.model.vision_model(pixel_values=pixel_values, output_attentions=True)
            image_embeds = normalize(projection(out.pooler_output), dim=-1)
            groups = out.last_hidden_state  # (batch, groups, hidden), after the final norm
            batch, count, hidden = groups.shape
            group_embeds = projection(groups.reshape(-1, hidden)).reshape(batch, count, -1)
            # (batch, patches, groups): the grouping stages chained by matrix product
            steps = [assignment.permute(0, 2, 1) for assignment in out.attentions]
            combined = steps[0]
            for step in steps[1:]:
                combined = combined @ step
            grouping = combined.permute(0, 2, 1).reshape(batch, -1, *self.grid)
            return image_embeds, normalize(group_embeds, dim=-1), grouping

    return GroupViTImageTower


def export_groupvit(options: ExportOptions, progress: ProgressFn = no_progress) -> ExportReport:
    """Export a GroupViT checkpoint (eval mode: no gumbel sampling) and write its report.

    Returns:
        The export report (also written to ``<out>/export_report.json``).
    """
    from transformers import GroupViTModel

    progress(f"loading {options.model}")
    loaded = load_reference(options.model, GroupViTModel)
    model, _, processor = loaded
    vision = model.config.vision_config
    groups = int(vision.num_output_groups[-1])
    dim = int(model.config.projection_dim)
    image_spec = image_graph_spec(
        _image_tower()(model),
        vision,
        processor,
        {
            IMAGE_EMBEDS: (dim,),
            GROUP_EMBEDS: (groups, dim),
            GROUPING: (groups, *patch_grid(vision)),
        },
    )
    return export_dual_encoder(options, Family.GROUPVIT, loaded, image_spec, progress)
