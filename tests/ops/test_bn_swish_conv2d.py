"""bn_swish_conv2d: lean backends against the float64 reference, saved bytes, modules and argument checks."""

import pytest
import torch
from torch import nn

import nvae_fast
from nvae_fast.memory import saved_tensor_bytes
from nvae_fast.nn import BNSwish, BNSwishConv2d, DepthwiseConv2d
from nvae_fast.ops import bn_swish_conv2d, bn_swish_conv2d_reference

from .._tensors import in_layout, randn
from ._helpers import assert_close_scaled, dtype_id, require

# (name, Cout (None: depthwise, = C), kernel, stride, groups)
CONVS = [
    ("1x1", 7, 1, 1, 1),
    ("1x1-s2", 6, 1, 2, 1),
    ("3x3", 5, 3, 1, 1),
    ("3x3-s2", 8, 3, 2, 1),
    ("3x3-g2", 4, 3, 1, 2),
    ("dw5x5", None, 5, 1, None),
    ("dw5x5-s2", None, 5, 2, None),
]
SHAPES = [(2, 6, 7, 9), (3, 4, 5, 11)]


def _inputs(shape, conv, dtype, kind, device, seed=0, bias=True):
    _, cout, k, stride, groups = conv
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    cout = c if cout is None else cout
    groups = c if groups is None else groups
    x = in_layout(randn(*shape, dtype=dtype, generator=g, scale=2.0, shift=0.5, device=device), kind)
    bn_w = randn(c, generator=g, scale=0.5, shift=1.0).to(device)
    bn_b = randn(c, generator=g, scale=0.5).to(device)
    rm = randn(c, generator=g, scale=0.3).to(device)
    rv = (randn(c, generator=g).abs() + 0.5).to(device)
    w = randn(cout, c // groups, k, k, dtype=dtype, generator=g, scale=0.3).to(device)
    b = randn(cout, dtype=dtype, generator=g).to(device) if bias else None
    return x, bn_w, bn_b, rm, rv, w, b, dict(stride=stride, padding=k // 2, dilation=1, groups=groups)


def _run(fn, x, bn_w, bn_b, rm, rv, w, b, conf, training, dout=None, cast=None):
    """Output, gradients of (x, bn_w, bn_b, w, b) for a fixed random dout, and the running stats."""
    tensors = [t for t in (x, bn_w, bn_b, w, b)]
    if cast is not None:
        tensors = [t if t is None else t.to(cast) for t in tensors]
        rm, rv = rm.to(cast), rv.to(cast)
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    rm, rv = rm.clone(), rv.clone()
    out = fn(leaves[0], leaves[1], leaves[2], rm, rv, training, 0.1, 1e-5, leaves[3], leaves[4], **conf)
    if dout is None:
        dout = randn(*out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(7)).to(out.device)
    wanted = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, wanted, dout.to(out.dtype))
    return out, grads, rm, rv, dout


@pytest.mark.parametrize("conv", CONVS, ids=[c[0] for c in CONVS])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_matches_reference(training, dtype, kind, shape, conv):
    x, bn_w, bn_b, rm, rv, w, b, conf = _inputs(shape, conv, dtype, kind, "cpu")
    with nvae_fast.use_backend("torch"):
        out, grads, rm_out, rv_out, dout = _run(bn_swish_conv2d, x, bn_w, bn_b, rm, rv, w, b, conf, training)
    out_ref, grads_ref, rm_ref, rv_ref, _ = _run(
        bn_swish_conv2d_reference, x, bn_w, bn_b, rm, rv, w, b, conf, training, dout, cast=torch.float64
    )
    assert out.dtype == dtype
    if kind == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last), "output must keep channels_last"
    # The conv sums C*k*k products of BN-Swish outputs rounded to dtype: widen by the summation.
    assert_close_scaled(out, out_ref, dtype, "out", factor=4)
    for name, grad, ref in zip(("dx", "dbn_weight", "dbn_bias", "dconv_weight", "dconv_bias"), grads, grads_ref):
        assert grad.dtype == (torch.float32 if name.startswith("dbn") else dtype), name
        assert_close_scaled(grad, ref, dtype, name, factor=8)
    assert_close_scaled(rm_out, rm_ref, torch.float32, "running_mean")
    assert_close_scaled(rv_out, rv_ref, torch.float32, "running_var")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("conv", [CONVS[2], CONVS[6]], ids=[CONVS[2][0], CONVS[6][0]])
def test_kernel_backends_match_reference(backend, conv):
    """The Triton (interpreted on CPU) and CUDA kernel sets, on a tiny shape."""
    device = require(backend)
    x, bn_w, bn_b, rm, rv, w, b, conf = _inputs((2, 3, 5, 6), conv, torch.float32, "contiguous", device)
    with nvae_fast.use_backend(backend):
        out, grads, rm_out, rv_out, dout = _run(bn_swish_conv2d, x, bn_w, bn_b, rm, rv, w, b, conf, True)
    out_ref, grads_ref, rm_ref, rv_ref, _ = _run(
        bn_swish_conv2d_reference, x, bn_w, bn_b, rm, rv, w, b, conf, True, dout, cast=torch.float64
    )
    assert nvae_fast.backend_info()["fallbacks"] == []
    assert_close_scaled(out, out_ref, torch.float32, "out", factor=4)
    for name, grad, ref in zip(("dx", "dbn_weight", "dbn_bias", "dconv_weight", "dconv_bias"), grads, grads_ref):
        assert_close_scaled(grad, ref, torch.float32, name, factor=8)
    assert_close_scaled(rm_out, rm_ref, torch.float32, "running_mean")
    assert_close_scaled(rv_out, rv_ref, torch.float32, "running_var")


@pytest.mark.parametrize("conv", [CONVS[0], CONVS[3], CONVS[4], CONVS[6]], ids=lambda c: c[0])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_float64(training, kind, conv):
    x, bn_w, bn_b, rm, rv, w, b, conf = _inputs((2, 4, 5, 6), conv, torch.float64, kind, "cpu")
    leaves = [t.detach().double().requires_grad_() for t in (x, bn_w, bn_b, w, b)]

    def fn(x, bn_w, bn_b, w, b):
        return bn_swish_conv2d(x, bn_w, bn_b, rm.double(), rv.double(), training, 0.1, 1e-5, w, b, **conf)

    with nvae_fast.use_backend("torch"):
        assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("conv", [CONVS[0], CONVS[2], CONVS[5]], ids=lambda c: c[0])
def test_saves_x_not_the_bn_swish_output(conv):
    """Saved for backward: x, the per-channel stats and the parameters; the reference also keeps y."""
    x, bn_w, bn_b, rm, rv, w, b, conf = _inputs((2, 8, 16, 16), conv, torch.float32, "contiguous", "cpu")
    x_bytes = x.numel() * x.element_size()
    small = sum(t.numel() * t.element_size() for t in (bn_w, bn_b, w, b)) + 2 * 8 * 4  # params, mean, invstd
    leaves = [t.requires_grad_() for t in (x, bn_w, bn_b, w, b)]
    args = (leaves[0], leaves[1], leaves[2], rm, rv, True, 0.1, 1e-5, leaves[3], leaves[4])
    with nvae_fast.use_backend("torch"):
        lean = saved_tensor_bytes(bn_swish_conv2d, *args, **conf).saved_bytes
    with nvae_fast.use_backend("reference"):
        ref = saved_tensor_bytes(bn_swish_conv2d, *args, **conf).saved_bytes
    assert x_bytes <= lean <= x_bytes + small
    assert ref >= 2 * x_bytes


def test_conv_weight_only_grad():
    """Only the conv weight requires grad: the BN backward is skipped, the conv grad is still right."""
    x, bn_w, bn_b, rm, rv, w, b, conf = _inputs((2, 4, 5, 6), CONVS[2], torch.float64, "contiguous", "cpu")
    bn_w, bn_b, rm, rv = bn_w.double(), bn_b.double(), rm.double(), rv.double()
    wl = w.clone().requires_grad_()
    with nvae_fast.use_backend("torch"):
        (dw,) = torch.autograd.grad(bn_swish_conv2d(x, bn_w, bn_b, rm.clone(), rv.clone(), True, 0.1, 1e-5, wl, b, **conf).sum(), wl)
    wr = w.clone().requires_grad_()
    (dw_ref,) = torch.autograd.grad(bn_swish_conv2d_reference(x, bn_w, bn_b, rm.clone(), rv.clone(), True, 0.1, 1e-5, wr, b, **conf).sum(), wr)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("depthwise", [False, True], ids=["conv3x3", "dw5x5"])
def test_module_matches_unfused_pair(depthwise, momentum):
    """BNSwishConv2d(bn, conv) == conv(bn(x)): outputs, gradients, buffers; state-dict keys bn.* / conv.*."""
    torch.manual_seed(0)
    conv = DepthwiseConv2d(5, 5, stride=2) if depthwise else nn.Conv2d(5, 3, 3, padding=1)
    bn = BNSwish(5, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    fused = BNSwishConv2d(bn, conv)
    pair = nn.Sequential(BNSwish(5, momentum=momentum), nn.Conv2d(5, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, groups=conv.groups))
    pair.load_state_dict({k.replace("bn.", "0.").replace("conv.", "1."): v for k, v in fused.state_dict().items()})
    assert set(fused.state_dict()) == {f"bn.{k}" for k in bn.state_dict()} | {f"conv.{k}" for k in conv.state_dict()}
    with nvae_fast.use_backend("torch"):
        for step in range(2):
            x = randn(3, 5, 7, 9, generator=torch.Generator().manual_seed(step), scale=2.0)
            out = fused(x)
            out_ref = pair(x)
            torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
            out.square().sum().backward()
            out_ref.square().sum().backward()
    for (name, p), q in zip(fused.named_parameters(), pair.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")
    for (name, t), u in zip(fused.named_buffers(), pair.buffers()):
        torch.testing.assert_close(t, u, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    fused.eval()
    pair.eval()
    x = randn(2, 5, 6, 6, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(fused(x), pair(x), rtol=1e-5, atol=1e-5)


def test_autocast_bfloat16():
    """Under CPU autocast the conv runs in bfloat16 (like F.conv2d) and gradients reach float32 leaves."""
    x, bn_w, bn_b, rm, rv, w, b, conf = _inputs((2, 4, 6, 5), CONVS[2], torch.float32, "contiguous", "cpu")
    results = []
    for backend in ("reference", "torch"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, bn_w, bn_b, w, b)]
        with nvae_fast.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
            out = bn_swish_conv2d(leaves[0], leaves[1], leaves[2], rm.clone(), rv.clone(), True, 0.1, 1e-5, leaves[3], leaves[4], **conf)
        assert out.dtype == torch.bfloat16
        results.append((out, torch.autograd.grad(out.float().square().sum(), leaves)))
    (out, grads), (out_ref, grads_ref) = results[1], results[0]
    assert_close_scaled(out, out_ref, torch.bfloat16, "out")
    for g, r in zip(grads, grads_ref):
        assert g.dtype == torch.float32
        assert_close_scaled(g, r, torch.bfloat16, "grad", factor=4)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_bad_inputs_name_the_argument(backend):
    x = torch.randn(2, 3, 6, 6)
    bw, bb, rm, rv = torch.ones(3), torch.zeros(3), torch.zeros(3), torch.ones(3)
    w = torch.randn(4, 3, 3, 3)

    def call(x=x, bw=bw, rm=rm, w=w, b=None, training=True, **conf):
        return bn_swish_conv2d(x, bw, bb, rm, rv, training, 0.1, 1e-5, w, b, **conf)

    with nvae_fast.use_backend(backend):
        with pytest.raises(ValueError, match="x must be 4-D"):
            call(x=x[0])
        with pytest.raises(ValueError, match="bn_swish_conv2d: weight must have 3 elements"):
            call(bw=torch.ones(4))
        with pytest.raises(ValueError, match="running_mean and running_var are required"):
            call(rm=None, training=False)
        with pytest.raises(ValueError, match="conv_weight must be 4-D"):
            call(w=w[0])
        with pytest.raises(ValueError, match="conv_weight must have shape"):
            call(w=torch.randn(4, 2, 3, 3))
        with pytest.raises(ValueError, match="groups must be"):
            call(groups=2)
        with pytest.raises(TypeError, match="conv_weight must have x's dtype"):
            call(w=w.double())
        with pytest.raises(ValueError, match="conv_bias must have 4 elements"):
            call(b=torch.zeros(3))
        with pytest.raises(ValueError, match="stride must be >= 1"):
            call(stride=0)
        with pytest.raises(ValueError, match="padding must be an int"):
            call(padding="same")
        with pytest.raises(ValueError, match="smaller than the dilated kernel"):
            call(w=torch.randn(4, 3, 9, 9))
    with pytest.raises(ValueError, match="numeric zero padding"):
        BNSwishConv2d(BNSwish(3), nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="conv has 4 input channels"):
        BNSwishConv2d(BNSwish(3), nn.Conv2d(4, 4, 3))


def test_module_hooks_still_fire():
    """With a hook on either module the pair runs unfused, so the hook sees its call; same result."""
    torch.manual_seed(0)
    fused = BNSwishConv2d(BNSwish(4), nn.Conv2d(4, 6, 3, padding=1))
    x = torch.randn(2, 4, 5, 5)
    expected = fused(x)
    seen = []
    handle = fused.bn.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    torch.testing.assert_close(fused(x), expected)
    handle.remove()
    assert seen == [x.shape]


# Weight-normalised conv: conv_weight is the direction V, W = exp(g) * u / (||u|| + eps), u = V * mask.
WN_CASES = [("3x3", CONVS[2], False), ("3x3-s2-masked", CONVS[3], True), ("1x1", CONVS[0], False), ("dw5x5", CONVS[5], True)]


def _wn_inputs(shape, conv, dtype, kind, device, masked, seed=0):
    x, bn_w, bn_b, rm, rv, v, b, conf = _inputs(shape, conv, dtype, kind, device, seed)
    g = torch.Generator().manual_seed(seed + 1)
    log_gain = randn(v.shape[0], 1, 1, 1, dtype=dtype, generator=g, scale=0.3).to(device)
    mask = (torch.rand(v.shape, generator=g) < 0.7).to(dtype).to(device) if masked else None
    return x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf


def _run_wn(fn, x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf, training, dout=None, cast=None):
    """Output and gradients of (x, bn_w, bn_b, v, b, log_gain) for a fixed random dout."""
    tensors = (x, bn_w, bn_b, v, b, log_gain)
    if cast is not None:
        tensors = tuple(t.to(cast) for t in tensors)
        rm, rv, mask = rm.to(cast), rv.to(cast), None if mask is None else mask.to(cast)
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(leaves[0], leaves[1], leaves[2], rm.clone(), rv.clone(), training, 0.1, 1e-5, leaves[3], leaves[4],
             wn_log_gain=leaves[5], wn_mask=mask, **conf)
    if dout is None:
        dout = randn(*out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(7)).to(out.device)
    return out, torch.autograd.grad(out, leaves, dout.to(out.dtype)), dout


WN_GRADS = ("dx", "dbn_weight", "dbn_bias", "dv", "dconv_bias", "dlog_gain")


@pytest.mark.parametrize("case", WN_CASES, ids=[c[0] for c in WN_CASES])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_weight_normalised_conv_matches_reference(dtype, kind, case):
    _, conv, masked = case
    x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf = _wn_inputs((2, 6, 7, 9), conv, dtype, kind, "cpu", masked)
    with nvae_fast.use_backend("torch"):
        out, grads, dout = _run_wn(bn_swish_conv2d, x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf, True)
    out_ref, grads_ref, _ = _run_wn(bn_swish_conv2d_reference, x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf, True,
                                    dout, cast=torch.float64)
    assert_close_scaled(out, out_ref, dtype, "out", factor=4)
    for name, grad, ref in zip(WN_GRADS, grads, grads_ref):
        assert_close_scaled(grad, ref, dtype, name, factor=8)
    if mask is not None:
        assert grads[3][mask == 0].abs().max() == 0, "masked entries of V get no gradient"


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("case", [WN_CASES[1], WN_CASES[3]], ids=[WN_CASES[1][0], WN_CASES[3][0]])
def test_weight_normalised_conv_kernel_backends(backend, case):
    _, conv, masked = case
    device = require(backend)
    x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf = _wn_inputs((2, 3, 5, 6), conv, torch.float32, "contiguous", device, masked)
    with nvae_fast.use_backend(backend):
        out, grads, dout = _run_wn(bn_swish_conv2d, x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf, True)
    out_ref, grads_ref, _ = _run_wn(bn_swish_conv2d_reference, x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf, True,
                                    dout, cast=torch.float64)
    assert nvae_fast.backend_info()["fallbacks"] == []
    assert_close_scaled(out, out_ref, torch.float32, "out", factor=4)
    for name, grad, ref in zip(WN_GRADS, grads, grads_ref):
        assert_close_scaled(grad, ref, torch.float32, name, factor=8)


@pytest.mark.parametrize("case", WN_CASES, ids=[c[0] for c in WN_CASES])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_weight_normalised_gradcheck_float64(training, case):
    _, conv, masked = case
    x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf = _wn_inputs((2, 4, 5, 6), conv, torch.float64, "contiguous", "cpu", masked)
    leaves = [t.detach().double().requires_grad_() for t in (x, bn_w, bn_b, v, b, log_gain)]

    def fn(x, bn_w, bn_b, v, b, log_gain):
        return bn_swish_conv2d(x, bn_w, bn_b, rm.double(), rv.double(), training, 0.1, 1e-5, v, b,
                               wn_log_gain=log_gain, wn_mask=mask, **conf)

    with nvae_fast.use_backend("torch"):
        assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("only", ["v", "log_gain"])
def test_weight_normalised_partial_gradients(only):
    """Only V or only g requires grad: the other gradient is skipped, the wanted one is still right."""
    x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf = _wn_inputs((2, 4, 5, 6), CONVS[2], torch.float64, "contiguous", "cpu", True)
    results = []
    for fn in (bn_swish_conv2d, bn_swish_conv2d_reference):
        leaf = (v if only == "v" else log_gain).clone().requires_grad_()
        args = (leaf, log_gain) if only == "v" else (v, leaf)
        with nvae_fast.use_backend("torch"):
            out = fn(x, bn_w.double(), bn_b.double(), rm.double(), rv.double(), True, 0.1, 1e-5, args[0], b,
                     wn_log_gain=args[1], wn_mask=mask, **conf)
        results.append(torch.autograd.grad(out.square().sum(), leaf)[0])
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)


def test_weight_normalised_conv_saves_no_weight():
    """With weight norm the lean op saves x, the stats and the parameters; W (a computed tensor) is not kept."""
    x, bn_w, bn_b, rm, rv, v, b, log_gain, _, conf = _wn_inputs((2, 8, 6, 6), ("c", 64, 3, 1, 1), torch.float32,
                                                                 "contiguous", "cpu", False)
    leaves = [t.requires_grad_() for t in (x, bn_w, bn_b, v, b, log_gain)]
    args = (*leaves[:3], rm, rv, True, 0.1, 1e-5, leaves[3], leaves[4])
    with nvae_fast.use_backend("torch"):
        lean = saved_tensor_bytes(bn_swish_conv2d, *args, wn_log_gain=leaves[5], exclude=leaves, **conf).saved_bytes
    assert lean == 2 * 8 * 4, "only mean and invstd (fp32, per channel) besides the inputs and parameters"
    with nvae_fast.use_backend("reference"):
        ref = saved_tensor_bytes(bn_swish_conv2d, *args, wn_log_gain=leaves[5], exclude=leaves, **conf).saved_bytes
    assert ref >= v.numel() * 4 + 2 * x.numel() * 4, "the reference keeps W and the BN-Swish output"


def test_weight_normalised_autocast_bfloat16():
    """Under CPU autocast W is computed in float32 and cast for the conv; gradients reach float32 leaves."""
    x, bn_w, bn_b, rm, rv, v, b, log_gain, mask, conf = _wn_inputs((2, 4, 6, 5), CONVS[2], torch.float32, "contiguous", "cpu", True)
    results = []
    for backend in ("reference", "torch"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, bn_w, bn_b, v, b, log_gain)]
        with nvae_fast.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
            out = bn_swish_conv2d(leaves[0], leaves[1], leaves[2], rm.clone(), rv.clone(), True, 0.1, 1e-5, leaves[3],
                                  leaves[4], wn_log_gain=leaves[5], wn_mask=mask, **conf)
        assert out.dtype == torch.bfloat16
        results.append((out, torch.autograd.grad(out.float().square().sum(), leaves)))
    (out, grads), (out_ref, grads_ref) = results[1], results[0]
    assert_close_scaled(out, out_ref, torch.bfloat16, "out")
    for name, g, r in zip(WN_GRADS, grads, grads_ref):
        assert g.dtype == torch.float32, name
        assert_close_scaled(g, r, torch.bfloat16, name, factor=4)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_weight_norm_arguments_are_checked(backend):
    x = torch.randn(2, 3, 6, 6)
    bw, bb, rm, rv = torch.ones(3), torch.zeros(3), torch.zeros(3), torch.ones(3)
    v = torch.randn(4, 3, 3, 3)

    def call(log_gain=torch.zeros(4, 1, 1, 1), mask=None):
        return bn_swish_conv2d(x, bw, bb, rm, rv, True, 0.1, 1e-5, v, None, wn_log_gain=log_gain, wn_mask=mask)

    with nvae_fast.use_backend(backend):
        with pytest.raises(ValueError, match="wn_mask is given without wn_log_gain"):
            call(log_gain=None, mask=torch.ones_like(v))
        with pytest.raises(ValueError, match="wn_log_gain must be 4-D"):
            call(log_gain=torch.zeros(4))
        with pytest.raises(ValueError, match=r"wn_log_gain must have shape \(4, 1, 1, 1\)"):
            call(log_gain=torch.zeros(3, 1, 1, 1))
        with pytest.raises(TypeError, match="wn_log_gain must have conv_weight's dtype"):
            call(log_gain=torch.zeros(4, 1, 1, 1, dtype=torch.float64))
        with pytest.raises(ValueError, match="wn_mask must be a constant"):
            call(mask=torch.ones(4, 3, 1, 3))
        with pytest.raises(ValueError, match="wn_mask must be a constant"):
            call(mask=torch.ones_like(v).requires_grad_())
