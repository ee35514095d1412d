"""Build the SAM2CT network: SAM2.1 Hiera-T from the `sam2` package, prompt encoder widened to 8."""

from __future__ import annotations

import torch
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam2_base import SAM2Base
from torch import nn

from sam2ct.model.config import NUM_POINT_LABELS, SAM2_CONFIG, SAM2CTConfig


class SAM2CTPromptEncoder(PromptEncoder):
    """SAM2's prompt encoder with ``num_labels`` learned point embeddings instead of 4.

    Labels -1 (padding) and 0..num_labels-1 are embedded as SAM2 does: the random-Fourier
    encoding of (x + 0.5, y + 0.5) plus the label's learned embedding.
    """

    def __init__(self, *args, num_labels: int = NUM_POINT_LABELS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_point_embeddings = num_labels
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, self.embed_dim)
                                              for _ in range(num_labels))

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor,
                      pad: bool) -> torch.Tensor:
        points = points + 0.5  # centre of the pixel
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        is_pad = (labels == -1).unsqueeze(-1)
        embedding = torch.where(is_pad, torch.zeros_like(embedding) + self.not_a_point_embed.weight,
                                embedding)
        for label, table in enumerate(self.point_embeddings):
            embedding = torch.where((labels == label).unsqueeze(-1), embedding + table.weight,
                                    embedding)
        return embedding


def sam2_overrides(config: SAM2CTConfig) -> list[str]:
    """Hydra overrides of the SAM2.1 Hiera-T config: input size, memory slots and the mask
    decoder's dynamic multimask (as SAM2's own video predictor sets it)."""
    feat = config.feature_size
    attn = "++model.memory_attention.layer"
    decoder = "++model.sam_mask_decoder_extra_args"
    return [
        f"++model.image_size={config.image_size}",
        f"{attn}.self_attention.feat_sizes=[{feat},{feat}]",
        f"{attn}.cross_attention.feat_sizes=[{feat},{feat}]",
        f"++model.num_maskmem={config.num_maskmem}",
        f"{decoder}.dynamic_multimask_via_stability={str(config.stability_multimask).lower()}",
        f"{decoder}.dynamic_multimask_stability_delta={config.stability_delta}",
        f"{decoder}.dynamic_multimask_stability_thresh={config.stability_threshold}",
    ]


def build_sam2_base(config: SAM2CTConfig | None = None) -> SAM2Base:
    """The plain SAM2.1 Hiera-T base model (4 point labels), random weights, from sam2's config."""
    import sam2  # noqa: F401  (initialises hydra's config module for the sam2 package)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = config or SAM2CTConfig()
    cfg = compose(config_name=SAM2_CONFIG, overrides=sam2_overrides(config))
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


def build_sam2ct(config: SAM2CTConfig | None = None, seed: int | None = None) -> SAM2Base:
    """The SAM2CT network (random weights): SAM2.1 Hiera-T with the 8-label prompt encoder.

    ``seed`` makes the random initialisation reproducible. Returned in eval mode on the CPU.

    Example
    -------
    >>> model = build_sam2ct(SAM2CTConfig(image_size=256))  # doctest: +SKIP
    >>> len(model.sam_prompt_encoder.point_embeddings)  # doctest: +SKIP
    8
    """
    config = config or SAM2CTConfig()
    if seed is not None:
        torch.manual_seed(seed)
    model = build_sam2_base(config)
    old = model.sam_prompt_encoder
    wide = SAM2CTPromptEncoder(embed_dim=old.embed_dim,
                               image_embedding_size=old.image_embedding_size,
                               input_image_size=old.input_image_size, mask_in_chans=16)
    # keep what SAM2 initialised (same seed => labels 0-3 and the rest equal SAM2's)
    wide.load_state_dict(old.state_dict(), strict=False)
    model.sam_prompt_encoder = wide
    return model.eval()
