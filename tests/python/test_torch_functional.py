"""The mmcv / Deformable DETR call forms: same results as ms_deform_attn, im2col_step ignored."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_torch_op import LEVELS, index_arrays, make_problem  # noqa: E402

import msdacore  # noqa: E402
import msdacore.torch as mt  # noqa: E402


@pytest.fixture
def problem():
    value, loc, attn = make_problem(seed=20, N=3, requires_grad=True)
    shapes, starts = index_arrays(LEVELS, "tensor")
    expected = mt.ms_deform_attn(value, shapes, starts, loc, attn)
    return value, shapes, starts, loc, attn, expected


def _check(out, expected, value, loc, attn):
    assert torch.equal(out, expected)
    grads = torch.autograd.grad(out.sum(), (value, loc, attn))
    ref = torch.autograd.grad(expected.sum(), (value, loc, attn), retain_graph=True)
    for a, b in zip(grads, ref):
        assert torch.equal(a, b)


def test_four_argument_form(problem):
    value, shapes, starts, loc, attn, expected = problem
    for fn in (mt.multi_scale_deformable_attn, mt.multi_scale_deformable_attn_pytorch,
               mt.ms_deform_attn_core_pytorch):
        _check(fn(value, shapes, loc, attn), expected, value, loc, attn)
    _check(mt.multi_scale_deformable_attn(value, LEVELS, loc, attn), expected, value, loc, attn)
    _check(mt.multi_scale_deformable_attn(value, value_spatial_shapes=shapes,
                                          sampling_locations=loc, attention_weights=attn),
           expected, value, loc, attn)


@pytest.mark.parametrize("im2col_step", [64, 1, 2, 5])  # 2 does not divide N = 3: ignored
def test_six_argument_form(problem, im2col_step):
    value, shapes, starts, loc, attn, expected = problem
    _check(mt.multi_scale_deformable_attn(value, shapes, starts, loc, attn, im2col_step),
           expected, value, loc, attn)
    _check(mt.MSDeformAttnFunction.apply(value, shapes, starts, loc, attn, im2col_step),
           expected, value, loc, attn)
    _check(mt.MultiScaleDeformableAttnFunction.apply(value, shapes, starts, loc, attn, im2col_step),
           expected, value, loc, attn)
    _check(mt.multi_scale_deformable_attn(value, shapes, starts, loc, attn,
                                          im2col_step=im2col_step),
           expected, value, loc, attn)
    _check(mt.multi_scale_deformable_attn(value, shapes, level_start_index=starts,
                                          sampling_locations=loc, attention_weights=attn,
                                          im2col_step=im2col_step), expected, value, loc, attn)


def test_five_arguments_without_im2col_step(problem):
    value, shapes, starts, loc, attn, expected = problem
    _check(mt.multi_scale_deformable_attn(value, shapes, starts, loc, attn), expected, value, loc,
           attn)


def test_misuse_is_a_type_error(problem):
    value, shapes, starts, loc, attn, _ = problem
    with pytest.raises(TypeError, match="takes"):
        mt.multi_scale_deformable_attn(value, shapes, loc)
    with pytest.raises(TypeError, match="unexpected keywords"):
        mt.multi_scale_deformable_attn(value, shapes, loc, attn, bogus=1)
    with pytest.raises(TypeError, match="both"):
        mt.multi_scale_deformable_attn(value, loc, attn, spatial_shapes=shapes,
                                       value_spatial_shapes=shapes)


def test_align_corners_is_passed_on(problem):
    value, shapes, starts, loc, attn, _ = problem
    out = mt.multi_scale_deformable_attn(value, shapes, loc, attn, align_corners=True)
    assert torch.equal(out, mt.ms_deform_attn(value, shapes, None, loc, attn, align_corners=True))


def test_plain_package_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, msdacore; assert 'torch' not in sys.modules, 'torch imported'; "
            "import msdacore.reference")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert hasattr(msdacore, "ms_deform_attn")
