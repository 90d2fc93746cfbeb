"""Tiny, randomly initialised models of every transformers (5.x) family that samples with
deformable attention, built from configs here (no downloads), for the msdacore
patch_transformers tests. Each family gives a model, its inputs, the outputs to compare,
what patch_transformers should report, and transformers' own sampling function per kind
of call (to check each call on the same arguments)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Callable

import torch

IMAGE = (64, 64)


def _resnet(out=("stage2", "stage3", "stage4"), sizes=(8, 16, 16, 32)):
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=8, hidden_sizes=list(sizes), depths=[1] * 4,
                        layer_type="basic", out_features=list(out))


def _rt_detr_like(**overrides):
    """The RT-DETR encoder/decoder family's common tiny settings."""
    config = dict(backbone_config=_resnet(), encoder_hidden_dim=16,
                  encoder_in_channels=[16, 16, 32], feat_strides=[8, 16, 32], encoder_layers=1,
                  encoder_ffn_dim=16, encoder_attention_heads=2, d_model=16, num_queries=10,
                  decoder_in_channels=[16, 16, 16], decoder_ffn_dim=16, num_feature_levels=3,
                  decoder_n_points=2, decoder_layers=2, decoder_attention_heads=2,
                  num_denoising=0, hidden_expansion=0.5, dropout=0.0)
    config.update(overrides)
    return config


def _pixels(generator, dtype, batch=2):
    """The same images in every dtype."""
    return torch.randn(batch, 3, *IMAGE, generator=generator, dtype=torch.float64).to(dtype)


def _pixel_inputs(generator, dtype):
    return {"pixel_values": _pixels(generator, dtype)}


def _masked_pixel_inputs(generator, dtype):
    mask = torch.ones(2, *IMAGE, dtype=torch.long)
    mask[1, :, 48:] = 0  # a padded image: masked values in the encoder
    mask[1, 40:, :] = 0
    return {"pixel_values": _pixels(generator, dtype), "pixel_mask": mask}


# ---------------------------------------------------------------------------
# Model builders: config -> model class


def _deformable_detr(two_stage):
    from transformers import (
        DeformableDetrConfig,
        DeformableDetrForObjectDetection,
        DeformableDetrModel,
    )

    backbone = _resnet()
    config = DeformableDetrConfig(
        backbone_config=backbone, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=4,
        decoder_attention_heads=4, num_queries=12, num_feature_levels=4, encoder_n_points=3,
        decoder_n_points=2, dropout=0.0, two_stage=two_stage, with_box_refine=two_stage,
        two_stage_num_proposals=12)
    return (DeformableDetrForObjectDetection if two_stage else DeformableDetrModel)(config)


def _grounding_dino(mm):
    import transformers as T

    bert = T.BertConfig(vocab_size=1100, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16, max_position_embeddings=32)
    config_class, model_class = (
        (T.MMGroundingDinoConfig, T.MMGroundingDinoForObjectDetection) if mm else
        (T.GroundingDinoConfig, T.GroundingDinoForObjectDetection))
    config = config_class(
        backbone_config=_resnet(), text_config=bert, num_queries=10, encoder_layers=1,
        encoder_ffn_dim=16, encoder_attention_heads=2, decoder_layers=2, decoder_ffn_dim=16,
        decoder_attention_heads=2, d_model=32, dropout=0.0, fusion_droppath=0.0,
        num_feature_levels=4, encoder_n_points=2, decoder_n_points=2, max_text_len=8)
    return model_class(config)


def _grounding_inputs(generator, dtype):
    # [CLS] a b . [SEP] pad: BERT's special ids build grounding DINO's text masks
    ids = torch.tensor([[101, 500, 600, 1012, 102, 0], [101, 700, 1012, 800, 102, 0]])
    return {"pixel_values": _pixels(generator, dtype), "input_ids": ids,
            "attention_mask": (ids != 0).long()}


def _omdet_turbo():
    from transformers import OmDetTurboConfig, OmDetTurboForObjectDetection

    text = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 8, "vocab_size": 50,
            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
            "model_type": "clip_text_model"}
    config = OmDetTurboConfig(
        text_config=text, backbone_config=_resnet(), use_timm_backbone=False,
        apply_layernorm_after_vision_backbone=False, decoder_num_layers=2, image_size=IMAGE[0],
        encoder_in_channels=[16, 16, 32], num_queries=10, encoder_layers=1,
        encoder_projection_indices=[2], encoder_attention_heads=2, decoder_num_heads=2,
        decoder_num_points=2, num_feature_levels=3, encoder_dim_feedforward=16,
        task_encoder_hidden_dim=16, decoder_dim_feedforward=16, class_embed_dim=8,
        text_projection_in_dim=8, text_projection_out_dim=8, encoder_hidden_dim=16,
        decoder_hidden_dim=16, vision_features_channels=[16, 16, 16])
    return OmDetTurboForObjectDetection(config)


def _omdet_inputs(generator, dtype):
    batch, classes, length = 2, 3, 5
    return {
        "pixel_values": _pixels(generator, dtype),
        "classes_input_ids": torch.randint(2, 50, (batch * classes, length), generator=generator),
        "classes_attention_mask": torch.ones(batch * classes, length, dtype=torch.long),
        "tasks_input_ids": torch.randint(2, 50, (batch, length), generator=generator),
        "tasks_attention_mask": torch.ones(batch, length, dtype=torch.long),
        "classes_structure": torch.full((batch,), classes),
    }


def _rt_detr():
    from transformers import RTDetrConfig, RTDetrForObjectDetection

    return RTDetrForObjectDetection(RTDetrConfig(**_rt_detr_like()))


def _rt_detr_v2(method):
    from transformers import RTDetrV2Config, RTDetrV2ForObjectDetection

    return RTDetrV2ForObjectDetection(RTDetrV2Config(**_rt_detr_like(
        decoder_n_levels=3, decoder_method=method)))


def _d_fine():
    from transformers import DFineConfig, DFineForObjectDetection

    return DFineForObjectDetection(DFineConfig(**_rt_detr_like(
        decoder_n_points=[3, 1, 2], decoder_n_levels=3, depth_mult=0.34, reg_max=8)))


def _deimv2():
    from transformers import Deimv2Config, Deimv2ForObjectDetection

    return Deimv2ForObjectDetection(Deimv2Config(**_rt_detr_like(
        decoder_n_points=[3, 1, 2], depth_mult=0.34, max_num_bins=8)))


def _detr_with_vit(kind):
    import transformers as T

    if kind == "lw_detr":
        backbone = T.LwDetrViTConfig(num_attention_heads=2, num_hidden_layers=2,
                                     out_indices=[1, 2], hidden_size=16, patch_size=8,
                                     num_windows=1, image_size=IMAGE[0],
                                     pretrain_image_size=IMAGE[0], mlp_ratio=1)
        config_class, model_class = T.LwDetrConfig, T.LwDetrForObjectDetection
    else:
        backbone = T.RfDetrDinov2Config(num_attention_heads=2, num_hidden_layers=2,
                                        out_features=["stage1", "stage2"], hidden_size=16,
                                        patch_size=8, num_windows=1, image_size=IMAGE[0],
                                        mlp_ratio=1)
        config_class, model_class = T.RfDetrConfig, T.RfDetrForObjectDetection
    config = config_class(backbone_config=backbone, d_model=16,
                          projector_scale_factors=[0.5, 2.0], decoder_ffn_dim=16,
                          decoder_layers=2, decoder_self_attention_heads=2,
                          decoder_cross_attention_heads=2, num_queries=10, group_detr=1,
                          dropout=0.0, decoder_n_points=2, c2f_num_blocks=1)
    return model_class(config)


def _pp_doclayout(version):
    import transformers as T

    config_class = getattr(T, f"PPDocLayout{version}Config")
    model_class = getattr(T, f"PPDocLayout{version}ForObjectDetection")
    overrides = {}
    if version == "V3":  # a stride-4 feature for the mask head, then the three levels
        overrides = dict(backbone_config=_resnet(out=("stage1", "stage2", "stage3", "stage4")),
                         x4_feat_dim=8, mask_feature_channels=[8, 8], num_prototypes=4)
    if version == "V2":  # a small reading-order model
        overrides = dict(reading_order_config=dict(
            hidden_size=16, num_attention_heads=2, intermediate_size=16, num_hidden_layers=1,
            coordinate_size=4, shape_size=4, global_pointer_head_size=8))
    config = config_class(**_rt_detr_like(**overrides))
    if version == "V2":
        config.class_thresholds = [0.5] * config.num_labels
        config.class_order = list(range(config.num_labels))
    return model_class(config)


def _mask2former():
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    config = Mask2FormerConfig(
        backbone_config=_resnet(out=("stage1", "stage2", "stage3", "stage4")),
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        encoder_layers=2, decoder_layers=2, num_attention_heads=2, dim_feedforward=32,
        num_queries=10)
    return Mask2FormerForUniversalSegmentation(config)


def _oneformer():
    from transformers import OneFormerConfig, OneFormerForUniversalSegmentation

    config = OneFormerConfig(
        backbone_config=_resnet(out=("stage1", "stage2", "stage3", "stage4")), conv_dim=32,
        mask_dim=32, hidden_dim=32, encoder_feedforward_dim=32, encoder_layers=2,
        decoder_layers=2, num_attention_heads=2, dim_feedforward=32, num_queries=10,
        text_encoder_width=32, text_encoder_num_layers=1, text_encoder_vocab_size=100,
        text_encoder_context_length=8, task_seq_len=8, text_encoder_n_ctx=2,
        query_dec_layers=1, dropout=0.0)
    return OneFormerForUniversalSegmentation(config)


def _oneformer_inputs(generator, dtype):
    return {"pixel_values": _pixels(generator, dtype),
            "task_inputs": torch.randint(1, 100, (2, 8), generator=generator)}


# ---------------------------------------------------------------------------
# transformers' own sampling, per kind of call (the per-call reference)


def _module(family):
    return importlib.import_module(f"transformers.models.{family}.modeling_{family}")


def module_forward_reference(family) -> Callable:
    """MultiScaleDeformableAttention.forward of the family, as a function of its arguments
    (the module is parameter-free and its forward does not read self)."""
    return functools.partial(_module(family).MultiScaleDeformableAttention.forward, None)


def function_reference(family, name) -> Callable:
    return getattr(_module(family), name)


MODULE = "multi_scale_deformable_attention_forward"
V1 = "multi_scale_deformable_attention"
V2 = "multi_scale_deformable_attention_v2"


@dataclasses.dataclass
class Family:
    name: str            # test id
    family: str          # transformers.models.<family>
    build: Callable      # () -> model (float32, random weights)
    inputs: Callable     # (generator, dtype) -> model kwargs
    outputs: tuple       # output fields compared and put into the loss
    report: dict         # what patch_transformers must report: {what: count}
    kind: str            # MODULE, V1 or V2: the msdacore function each call goes to
    method: str = "default"

    def reference(self) -> Callable:
        if self.kind == MODULE:
            return module_forward_reference(self.family)
        return function_reference(self.family, self.kind)


def _detection(*extra):
    return ("logits", "pred_boxes") + extra


_MSDA = "MultiScaleDeformableAttention.forward"
FAMILIES = [
    Family("deformable_detr", "deformable_detr", functools.partial(_deformable_detr, False),
           _masked_pixel_inputs, ("last_hidden_state", "encoder_last_hidden_state",
                                  "intermediate_hidden_states", "intermediate_reference_points"),
           {_MSDA: 4}, MODULE),
    Family("deformable_detr_two_stage", "deformable_detr",
           functools.partial(_deformable_detr, True), _masked_pixel_inputs,
           _detection("encoder_last_hidden_state", "intermediate_reference_points"),
           {_MSDA: 4}, MODULE),
    Family("grounding_dino", "grounding_dino", functools.partial(_grounding_dino, False),
           _grounding_inputs, _detection("encoder_last_hidden_state_vision"), {_MSDA: 3},
           MODULE),
    Family("mm_grounding_dino", "mm_grounding_dino", functools.partial(_grounding_dino, True),
           _grounding_inputs, _detection("encoder_last_hidden_state_vision"), {_MSDA: 3},
           MODULE),
    Family("omdet_turbo", "omdet_turbo", _omdet_turbo, _omdet_inputs,
           ("decoder_coord_logits", "decoder_class_logits"), {_MSDA: 2}, MODULE),
    Family("rt_detr", "rt_detr", _rt_detr, _pixel_inputs, _detection(), {_MSDA: 2}, MODULE),
    Family("rt_detr_v2", "rt_detr_v2", functools.partial(_rt_detr_v2, "default"),
           _pixel_inputs, _detection(),
           {"RTDetrV2MultiscaleDeformableAttention.forward: "
            "multi_scale_deformable_attention_v2": 2}, V2),
    Family("rt_detr_v2_discrete", "rt_detr_v2", functools.partial(_rt_detr_v2, "discrete"),
           _pixel_inputs, _detection(),
           {"RTDetrV2MultiscaleDeformableAttention.forward: "
            "multi_scale_deformable_attention_v2": 2}, V2, "discrete"),
    Family("d_fine", "d_fine", _d_fine, _pixel_inputs, _detection(),
           {"DFineMultiscaleDeformableAttention.ms_deformable_attn_core: "
            "multi_scale_deformable_attention_v2": 2}, V2),
    Family("deimv2", "deimv2", _deimv2, _pixel_inputs, _detection(),
           {"Deimv2MultiscaleDeformableAttention.ms_deformable_attn_core: "
            "multi_scale_deformable_attention_v2": 2}, V2),
    Family("lw_detr", "lw_detr", functools.partial(_detr_with_vit, "lw_detr"), _pixel_inputs,
           _detection(), {_MSDA: 2}, MODULE),
    Family("rf_detr", "rf_detr", functools.partial(_detr_with_vit, "rf_detr"), _pixel_inputs,
           _detection(), {_MSDA: 2}, MODULE),
    Family("pp_doclayout_v2", "pp_doclayout_v2", functools.partial(_pp_doclayout, "V2"),
           _pixel_inputs, _detection(), {_MSDA: 2}, MODULE),
    Family("pp_doclayout_v3", "pp_doclayout_v3", functools.partial(_pp_doclayout, "V3"),
           _pixel_inputs, _detection(), {_MSDA: 2}, MODULE),
    Family("pp_doclayout_v4", "pp_doclayout_v4", functools.partial(_pp_doclayout, "V4"),
           _pixel_inputs, _detection(), {_MSDA: 2}, MODULE),
    Family("mask2former", "mask2former", _mask2former, _pixel_inputs,
           ("class_queries_logits", "masks_queries_logits"),
           {"Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention.forward: "
            "multi_scale_deformable_attention": 2}, V1),
    Family("oneformer", "oneformer", _oneformer, _oneformer_inputs,
           ("class_queries_logits", "masks_queries_logits"),
           {"OneFormerPixelDecoderEncoderMultiscaleDeformableAttention.forward: "
            "multi_scale_deformable_attention": 2}, V1),
]
BY_NAME = {f.name: f for f in FAMILIES}


def perturb_sampling(model, seed=1, scale=0.2):
    """Moves the attention away from its initialisation (points on pixel centres, uniform
    weights), so samples fall between pixels and near borders."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sampling_offsets" in name or "attention_weights" in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def tiny_model(spec: Family, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = spec.build()
    return perturb_sampling(model).to(dtype).eval()
