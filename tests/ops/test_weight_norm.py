"""The weight-normalised conv Function equals the unfused composition and does not keep the weight."""

import pytest
import torch
import torch.nn.functional as F

import nvae_fast
from nvae_fast.memory import saved_tensor_bytes
from nvae_fast.model.cells import WNConv2d
from nvae_fast.ops.weight_norm import weight_norm, wn_conv2d

# (cin, cout, kernel, stride, padding, groups, bias, masked, input size): the model's variants (3×3 stem and
# heads, 1×1 combiners, 1×1 stride-2 factorised reduction, masked flow convs) plus grouped and odd ones.
CASES = [
    (3, 5, 3, 1, 1, 1, True, False, (7, 6)),
    (4, 6, 1, 1, 0, 1, True, False, (5, 5)),
    (5, 3, 1, 2, 0, 1, True, False, (7, 4)),
    (4, 5, 1, 1, 0, 1, False, False, (6, 3)),
    (3, 6, 3, 1, 1, 1, False, True, (5, 6)),
    (6, 3, 1, 1, 0, 1, True, True, (4, 5)),
    (4, 6, 3, 2, 1, 2, True, False, (7, 7)),
    (2, 3, (3, 1), (2, 1), (0, 1), 1, True, False, (6, 5)),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _inputs(case, dtype, seed):
    cin, cout, k, stride, padding, groups, bias, masked, hw = case
    g = torch.Generator().manual_seed(seed)
    kh, kw = _pair(k)
    x = torch.randn(2, cin, *hw, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(cout, cin // groups, kh, kw, generator=g, dtype=dtype, requires_grad=True)
    log_gain = (0.3 * torch.randn(cout, 1, 1, 1, generator=g, dtype=dtype)).requires_grad_()
    b = torch.randn(cout, generator=g, dtype=dtype, requires_grad=True) if bias else None
    mask = (torch.rand(v.shape, generator=g) < 0.6).to(dtype) if masked else None
    conf = dict(stride=_pair(stride), padding=_pair(padding), dilation=(1, 1), groups=groups)
    return x, v, log_gain, b, mask, conf


def _unfused(x, v, log_gain, b, mask, conf):
    return F.conv2d(x, weight_norm(v, log_gain, mask), b, **conf)


@pytest.mark.parametrize("case", CASES)
def test_function_matches_unfused_float64(case):
    x, v, log_gain, b, mask, conf = _inputs(case, torch.float64, seed=len(str(case)))
    leaves = [t for t in (x, v, log_gain, b) if t is not None]
    y = wn_conv2d(x, v, log_gain, b, mask, **conf)
    ref = _unfused(x, v, log_gain, b, mask, conf)
    dy = torch.randn_like(ref)
    got = torch.autograd.grad(y, leaves, dy)
    want = torch.autograd.grad(ref, leaves, dy)
    # float64, same maths in another order: agreement to ~1e-15 relative; 1e-10 leaves a wide margin.
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
    for name, a, e in zip(("dx", "dv", "dg", "db"), got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    if mask is not None:
        assert torch.all(got[1][mask == 0] == 0), "masked-out taps must get zero gradient"


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4], CASES[6]])
def test_gradcheck(case):
    x, v, log_gain, b, mask, conf = _inputs(case, torch.float64, seed=3)
    fn = lambda x, v, g, *bias: wn_conv2d(x, v, g, bias[0] if bias else None, mask, **conf)  # noqa: E731
    args = (x, v, log_gain) + ((b,) if b is not None else ())
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("need", [(True, False, False), (False, True, False), (False, False, True), (False, True, True)])
def test_partial_gradients(need):
    x, v, log_gain, b, mask, conf = _inputs(CASES[0], torch.float64, seed=5)
    for t, n in zip((x, v, log_gain), need):
        t.requires_grad_(n)
    b.requires_grad_(False)
    leaves = [t for t in (x, v, log_gain) if t.requires_grad]
    got = torch.autograd.grad(wn_conv2d(x, v, log_gain, b, mask, **conf).square().sum(), leaves)
    want = torch.autograd.grad(_unfused(x, v, log_gain, b, mask, conf).square().sum(), leaves)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_zero_norm_channel_gets_finite_gradients():
    x, v, log_gain, b, mask, conf = _inputs(CASES[0], torch.float64, seed=7)
    with torch.no_grad():
        v[1].zero_()
    dv, dg = torch.autograd.grad(wn_conv2d(x, v, log_gain, b, None, **conf).sum(), (v, log_gain))
    assert torch.isfinite(dv).all() and torch.isfinite(dg).all()
    assert dg[1].item() == 0.0


@pytest.mark.parametrize("masked", [False, True])
def test_module_backends_agree_and_lean_saves_no_weight(masked):
    torch.manual_seed(11)
    mask = (torch.rand(7, 5, 3, 3) < 0.6).float() if masked else None
    conv = WNConv2d(5, 7, 3, padding=1, mask=mask)
    x = torch.randn(3, 5, 9, 8, requires_grad=True)
    dy = torch.randn(3, 7, 9, 8)
    results = {}
    for name in ("reference", "torch"):
        with nvae_fast.use_backend(name):
            mem = saved_tensor_bytes(conv, x, exclude=list(conv.parameters()))
            grads = torch.autograd.grad(mem.output, (x, conv.weight, conv.log_weight_norm, conv.bias), dy)
        results[name] = (mem.output.detach(), grads, mem.saved_bytes)
    (ref_y, ref_g, ref_bytes), (y, g, lean_bytes) = results["reference"], results["torch"]
    # float32, same maths reordered: measured <= 1e-6 relative.
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    for a, e in zip(g, ref_g):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
    # lean: x only (and the mask, a constant buffer); the reference keeps the weight W besides.
    mask_bytes = mask.nbytes if masked else 0
    assert lean_bytes == x.nbytes + mask_bytes
    assert ref_bytes >= lean_bytes + conv.weight.nbytes


def test_module_state_dict_keys_unchanged():
    conv = WNConv2d(4, 6, 3, padding=1, mask=torch.ones(6, 4, 3, 3))
    assert list(conv.state_dict()) == ["weight", "bias", "log_weight_norm"]


def test_spectral_weight_is_differentiable_effective_weight():
    conv = WNConv2d(4, 6, 3, padding=1)
    w = conv.spectral_weight()
    norms = torch.linalg.vector_norm(w.detach(), dim=(1, 2, 3))
    torch.testing.assert_close(norms, conv.log_weight_norm.detach().exp().flatten(), rtol=1e-4, atol=0)
    dv, dg = torch.autograd.grad(w.square().sum(), (conv.weight, conv.log_weight_norm))
    assert dv.abs().sum() > 0 and dg.abs().sum() > 0


def test_errors_name_the_argument():
    x, v, log_gain, b, _, conf = _inputs(CASES[0], torch.float64, seed=1)
    with pytest.raises(TypeError, match="v must have x's dtype"):
        wn_conv2d(x.float(), v, log_gain, b, None, **conf)
    with pytest.raises(ValueError, match="padding"):
        wn_conv2d(x, v, log_gain, b, None, stride=(1, 1), padding="same")


def test_autocast_runs_the_conv_in_the_autocast_dtype_like_reference():
    torch.manual_seed(13)
    conv = WNConv2d(5, 7, 3, padding=1)
    x = torch.randn(3, 5, 9, 7, requires_grad=True)
    results = {}
    for name in ("reference", "torch"):
        with nvae_fast.use_backend(name), torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        grads = torch.autograd.grad(y.float().sum(), (x, conv.weight, conv.log_weight_norm, conv.bias))
        results[name] = (y, grads)
    (ref_y, ref_g), (y, g) = results["reference"], results["torch"]
    assert y.dtype == ref_y.dtype == torch.bfloat16
    # Same bfloat16 convolutions on identically rounded operands: measured equal outputs and <= 2e-7 relative
    # gradients (the weight-norm chain rule runs in float32 in both).
    torch.testing.assert_close(y, ref_y, rtol=0, atol=0)
    for a, e in zip(g, ref_g):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
