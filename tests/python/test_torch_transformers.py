"""A real client: a small randomly initialised transformers DeformableDetrModel (no
downloads) gives the same outputs and parameter gradients with and without
msdacore.torch.patch_transformers."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import msdacore.torch as mt  # noqa: E402
from msdacore.torch import transformers_patch  # noqa: E402

ENCODER_LAYERS, DECODER_LAYERS = 2, 2


def tiny_model(two_stage=False, seed=0):
    """DeformableDetrModel with a 4-stage basic ResNet of a few channels, random weights.
    two_stage: DeformableDetrForObjectDetection, two-stage with box refinement (the
    decoder then samples around boxes: 4-coordinate reference points)."""
    from transformers import (DeformableDetrConfig, DeformableDetrForObjectDetection,
                              DeformableDetrModel, ResNetConfig)

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                            layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    config = DeformableDetrConfig(
        backbone_config=backbone, d_model=32, encoder_layers=ENCODER_LAYERS,
        decoder_layers=DECODER_LAYERS, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=4, decoder_attention_heads=4, num_queries=12,
        num_feature_levels=4, encoder_n_points=3, decoder_n_points=2, dropout=0.0,
        two_stage=two_stage, with_box_refine=two_stage, two_stage_num_proposals=12)
    torch.manual_seed(seed)
    model_class = DeformableDetrForObjectDetection if two_stage else DeformableDetrModel
    model = model_class(config).double().eval()
    # Move the attention away from the uniform initialisation.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sampling_offsets" in name or "attention_weights" in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    return model


def inputs(seed=2):
    g = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(2, 3, 64, 88, generator=g, dtype=torch.float64)
    pixel_mask = torch.ones(2, 64, 88, dtype=torch.long)
    pixel_mask[1, :, 70:] = 0  # a padded image: masked values in the encoder
    pixel_mask[1, 50:, :] = 0
    return pixel_values, pixel_mask


OUTPUTS = ("last_hidden_state", "encoder_last_hidden_state", "intermediate_hidden_states",
           "intermediate_reference_points")
DETECTION_OUTPUTS = ("logits", "pred_boxes", "encoder_last_hidden_state",
                     "intermediate_reference_points")


def output_names(model):
    return DETECTION_OUTPUTS if hasattr(model, "class_embed") else OUTPUTS


def run(model, pixel_values, pixel_mask):
    out = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    tensors = [getattr(out, name) for name in output_names(model)]
    loss = sum((t * torch.linspace(-1, 1, t.shape[-1], dtype=t.dtype)).sum() for t in tensors)
    params = [p for _, p in sorted(model.named_parameters()) if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    names = [n for n, p in sorted(model.named_parameters()) if p.requires_grad]
    return tensors, dict(zip(names, grads))


@pytest.mark.parametrize("two_stage", [False, True], ids=["points", "boxes"])
def test_patched_deformable_detr_matches(two_stage, monkeypatch):
    model = tiny_model(two_stage=two_stage)
    patched = copy.deepcopy(model)
    calls = []
    original_op = transformers_patch.ms_deform_attn

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original_op(*args, **kwargs)

    monkeypatch.setattr(transformers_patch, "ms_deform_attn", counting)
    assert mt.patch_transformers(patched) == ENCODER_LAYERS + DECODER_LAYERS

    pixel_values, pixel_mask = inputs()
    expected, expected_grads = run(model, pixel_values, pixel_mask)
    got, got_grads = run(patched, pixel_values, pixel_mask)
    assert len(calls) == ENCODER_LAYERS + DECODER_LAYERS

    for name, a, b in zip(output_names(model), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    assert got_grads.keys() == expected_grads.keys()
    checked = 0
    for name, b in expected_grads.items():
        a = got_grads[name]
        if b is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
        checked += 1
    assert checked > 50


def test_patch_is_idempotent_and_reversible():
    model = tiny_model()
    pixel_values, pixel_mask = inputs()
    with torch.no_grad():
        before = model(pixel_values=pixel_values, pixel_mask=pixel_mask).last_hidden_state
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert mt.patch_transformers(model) == 4
    assert mt.patch_transformers(model) == 4
    assert model.state_dict().keys() == state.keys()
    with torch.no_grad():
        patched = model(pixel_values=pixel_values, pixel_mask=pixel_mask).last_hidden_state
    torch.testing.assert_close(patched, before, rtol=1e-10, atol=1e-12)
    assert mt.unpatch_transformers(model) == 4
    assert mt.unpatch_transformers(model) == 0
    with torch.no_grad():
        after = model(pixel_values=pixel_values, pixel_mask=pixel_mask).last_hidden_state
    assert torch.equal(after, before)


def test_patch_finds_nothing_in_other_models():
    assert mt.patch_transformers(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0
    # msdacore's own module is not a transformers module.
    assert mt.patch_transformers(mt.MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=1)) == 0


def test_patched_float32_model_is_close():
    model = tiny_model().float()
    patched = copy.deepcopy(model)
    mt.patch_transformers(patched)
    pixel_values, pixel_mask = inputs()
    with torch.no_grad():
        a = model(pixel_values=pixel_values.float(), pixel_mask=pixel_mask)
        b = patched(pixel_values=pixel_values.float(), pixel_mask=pixel_mask)
    for name in OUTPUTS:
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-5)
