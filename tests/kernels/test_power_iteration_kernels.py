"""The Triton power-iteration kernel set against the float64 reference, on ragged batches of weights.

Runs on the GPU when there is one, otherwise in the Triton interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1``). Every schedule is exercised (the ``schedule`` fixture): by default the weights that
fit one tile stay in registers and the two larger ones of SHAPES are streamed over several tiles by one
program each; ``items`` sets ``PERSISTENT_MAX = 0`` so that every weight takes the item schedule (one launch of
ticketed row and column items, over runs of weights sized to half the L2).
"""

import pytest
import torch
import torch.nn.functional as F

from nvae_fast.ops.power_iteration import power_iteration_reference

from nvae_fast.kernels import _host

from .._tensors import randn

pi = pytest.importorskip("nvae_fast.kernels.power_iteration")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# Ragged shapes: conv-like weights and plain matrices, one wider than a GPU/interpreter tile (67 x 520:
# several row and column tiles), one taller (130 x 40), repeats and degenerate 1-column / 1-row cases.
SHAPES = [(4, 3, 3, 3), (6, 5), (67, 520), (7, 2, 1, 1), (3, 11), (16, 4, 5, 5), (130, 40), (6, 5), (5, 1), (1, 9)]

# Weights are the same rounded values on both sides; the kernels accumulate in float32 (float64 for
# float64), so u, v and sigma match the float64 reference to float32 accuracy whatever the weight dtype.
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}


def _inputs(shapes, dtype, seed=0, vec_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    weights = [randn(*s, dtype=dtype, device=DEVICE, generator=g) for s in shapes]
    mats = [w.reshape(w.shape[0], -1) for w in weights]
    def unit(n):
        return F.normalize(randn(n, dtype=torch.float64, generator=g), dim=0).to(DEVICE, vec_dtype)

    us = [unit(m.shape[0]) for m in mats]
    vs = [unit(m.shape[1]) for m in mats]
    return mats, us, vs


def _reference(mats, us, vs, n_iter):
    """(sigma, u, v) of the float64 reference from the same inputs."""
    u64, v64 = [u.double().clone() for u in us], [v.double().clone() for v in vs]
    sigma = power_iteration_reference([m.double() for m in mats], u64, v64, n_iter)
    return sigma, u64, v64


def _run(mats, us, vs, n_iter):
    us, vs = [u.clone() for u in us], [v.clone() for v in vs]
    pi.update(mats, us, vs, n_iter)
    return pi.sigmas(mats, us, vs), us, vs


def _assert_close(actual, expected, tol, what):
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * max(expected.double().abs().max().item(), 1.0), f"{what}: max error {err:.3g} (tol {tol:g})"


def _check(result, reference, tol):
    (sig, us, vs), (sig_ref, us_ref, vs_ref) = result, reference
    _assert_close(sig, sig_ref, tol, "sigma")
    for i, (u, u_ref, v, v_ref) in enumerate(zip(us, us_ref, vs, vs_ref)):
        _assert_close(u, u_ref, tol, f"u[{i}]")
        _assert_close(v, v_ref, tol, f"v[{i}]")


@pytest.fixture(params=["default", "items"])
def schedule(request, monkeypatch):
    if request.param == "items":
        monkeypatch.setattr(pi, "PERSISTENT_MAX", 0)
    return request.param


@pytest.mark.parametrize(
    "dtype, n_iter",
    [(torch.float32, 0), (torch.float32, 1), (torch.float32, 3), (torch.float16, 3), (torch.bfloat16, 3),
     (torch.float64, 3)],
    ids=lambda p: str(p).replace("torch.", ""),
)
def test_matches_reference(schedule, dtype, n_iter):
    vec = torch.float64 if dtype == torch.float64 else torch.float32
    mats, us, vs = _inputs(SHAPES, dtype, vec_dtype=vec)
    result = _run(mats, us, vs, n_iter)
    assert result[0].dtype == vec and result[0].shape == (len(mats),)
    _check(result, _reference(mats, us, vs, n_iter), TOL[dtype])


def test_mixed_dtypes_and_strided_views(schedule):
    """fp16 and fp32 weights in one call (one launch set per dtype), a transposed (column-strided) weight,
    u/v as strided views and in float16: the float16 u/v only round the final vectors."""
    mats, us, vs = _inputs(SHAPES[:6], torch.float32, seed=4)
    mats[1] = mats[1].half()
    mats[3] = torch.randn(2, 7, device=DEVICE).t()  # (7, 2) like before, with column stride 7
    us[2] = torch.randn(2 * us[2].numel(), device=DEVICE)[::2]
    vs[4] = torch.randn(3 * vs[4].numel(), device=DEVICE)[1::3]
    us[5], vs[5] = us[5].half(), vs[5].half()
    sig_ref, us_ref, vs_ref = _reference(mats, us, vs, 2)
    pi.update(mats, us, vs, 2)
    sig = pi.sigmas(mats, us, vs)
    assert sig.dtype == torch.float32 and us[2].stride(0) == 2 and vs[4].stride(0) == 3
    _check((sig[:5], us[:5], vs[:5]), (sig_ref[:5], us_ref[:5], vs_ref[:5]), 2e-5)
    _check((sig[5:], us[5:], vs[5:]), (sig_ref[5:], us_ref[5:], vs_ref[5:]), 2e-3)


def test_updates_in_place():
    mats, us, vs = _inputs(SHAPES[:4], torch.float32, seed=2)
    _, us_ref, vs_ref = _reference(mats, us, vs, 2)
    tensors = us + vs
    pi.update(mats, us, vs, 2)
    assert all(a is b for a, b in zip(us + vs, tensors))
    for i, (a, b) in enumerate(zip(us + vs, us_ref + vs_ref)):
        _assert_close(a, b, 2e-5, f"vector {i}")


def test_converges_to_spectral_norm(schedule):
    mats, us, vs = _inputs([(6, 3, 3, 3), (9, 4), (3, 12), (20, 7)], torch.float32, seed=7)
    pi.update(mats, us, vs, 30)
    sig = pi.sigmas(mats, us, vs)
    exact = torch.stack([torch.linalg.matrix_norm(m.double(), ord=2) for m in mats])
    torch.testing.assert_close(sig.double(), exact, rtol=1e-4, atol=0)
    for m, u, v in zip(mats, us, vs):  # unit singular vectors: W v = sigma u
        torch.testing.assert_close(u.norm().item(), 1.0, rtol=1e-5, atol=0)
        torch.testing.assert_close(m @ v, (u @ m @ v) * u, rtol=1e-3, atol=1e-4)


def test_tiny_norms_are_clamped_like_the_reference(schedule):
    """||W^T u|| below eps: v = W^T u / eps, as F.normalize(eps=1e-12) does."""
    mats, us, vs = _inputs([(4, 6), (3, 5)], torch.float64, vec_dtype=torch.float64, seed=5)
    mats[0] = mats[0] * 1e-14
    _check(_run(mats, us, vs, 2), _reference(mats, us, vs, 2), 1e-12)


def test_bit_identical_across_runs(schedule):
    mats, us, vs = _inputs(SHAPES, torch.bfloat16, seed=9)
    first, second = _run(mats, us, vs, 2), _run(mats, us, vs, 2)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1] + first[2], second[1] + second[2]))


def test_default_schedule_uses_registers_and_streaming():
    block_r, block_k = pi._blocks()
    mats, _, _ = _inputs(SHAPES, torch.float32)
    fits = [m.shape[0] <= block_r and m.shape[1] <= block_k for m in mats]
    assert any(fits) and not all(fits) and all(m.numel() <= pi.PERSISTENT_MAX for m in mats)


def test_supports():
    mats, _, _ = _inputs(SHAPES[:3], torch.bfloat16)
    assert pi.supports(mats) is None


def test_tables_cached_across_calls(schedule):
    """A second call on the same tensors reuses the device tables (and computes the same as one call of
    two steps); a replaced weight gets new ones; weights read through a copy are not cached."""
    mats, us, vs = _inputs(SHAPES, torch.float32, seed=4)
    reference = _reference(mats, us, vs, 2)
    pi._GROUP_CACHE.clear()
    pi.update(mats, us, vs, 1)
    built = {k: [id(g) for g in groups] for k, groups in pi._GROUP_CACHE.items()}
    assert built
    pi.update(mats, us, vs, 1)
    assert {k: [id(g) for g in groups] for k, groups in pi._GROUP_CACHE.items()} == built
    _check((pi.sigmas(mats, us, vs), us, vs), reference, TOL[torch.float32])
    ids = {i for groups in pi._GROUP_CACHE.values() for i in map(id, groups)}
    mats[2] = mats[2].clone()
    pi.update(mats, us, vs, 1)
    assert {i for groups in pi._GROUP_CACHE.values() for i in map(id, groups)} - ids  # new tables
    pi._GROUP_CACHE.clear()
    pi.update([m.t().contiguous().t() if m.shape[1] > 1 else m for m in mats], us, vs, 1)
    assert all(not any(g.copies for g in groups) for groups in pi._GROUP_CACHE.values())


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.bfloat16,), (torch.float16, torch.float32)],
                         ids=["float32", "bfloat16", "mixed"])
def test_backward_is_one_launch_of_outer_products(monkeypatch, dtypes):
    """dW_i = g_i u_i v_i^T in each weight's shape and dtype, from the packed u, v of the forward, in one
    launch over tiles of every weight (67 x 520 and 130 x 40 take several); the tile table is cached by
    the layout."""
    g = torch.Generator().manual_seed(6)
    weights = [randn(*s, dtype=dtypes[i % len(dtypes)], device=DEVICE, generator=g) for i, s in enumerate(SHAPES)]
    us = [randn(w.shape[0], device=DEVICE, generator=g) for w in weights]
    vs = [randn(w[0].numel(), device=DEVICE, generator=g) for w in weights]
    grad = randn(len(weights), device=DEVICE, generator=g)
    _, saved, layout = pi.forward(weights, [u.clone() for u in us], [v.clone() for v in vs], 0)
    launched = []
    real = pi._outer_kernel
    monkeypatch.setattr(pi, "_outer_kernel", type("Counted", (), {
        "__getitem__": lambda self, grid: launched.append(grid) or real[grid]})())
    pi._TILE_CACHE.clear()
    grads = pi.backward(saved, layout, grad)
    assert len(launched) == 1 and len(pi._TILE_CACHE) == 1
    for i, (w, dw) in enumerate(zip(weights, grads)):
        assert dw.shape == w.shape and dw.dtype == w.dtype, i
        expected = (grad[i].double() * torch.outer(us[i].double(), vs[i].double())).reshape(w.shape)
        _assert_close(dw, expected, 1e-2 if w.dtype != torch.float32 else 1e-6, f"dW[{i}]")
    table = next(iter(pi._TILE_CACHE.values()))[0]
    pi.backward(saved, layout, grad)
    assert next(iter(pi._TILE_CACHE.values()))[0] is table


@pytest.mark.parametrize("n_iter", [1, 3])
def test_forward_takes_sigma_from_the_last_step(schedule, monkeypatch, n_iter):
    """With n_iter >= 1 the kernels that normalise u_i write sigma_i = ||s_i||^2 / max(||s_i||, eps) (s_i = W_i
    v_i of the last step): no sigma launch, no further read of W; sigma as the reference's u^T W v (a zero
    weight included: sigma 0)."""
    mats, us, vs = _inputs(SHAPES, torch.float32, seed=8)
    mats.append(torch.zeros(5, 7, device=DEVICE))
    us.append(F.normalize(torch.ones(5), dim=0).to(DEVICE))
    vs.append(F.normalize(torch.ones(7), dim=0).to(DEVICE))
    reference = _reference(mats, us, vs, n_iter)
    launched = []
    for name in ("_sigma_weight_kernel", "_sigma_rows_kernel", "_sigma_sum_kernel"):
        monkeypatch.setattr(pi, name, type("Counted", (), {
            "__getitem__": lambda self, grid, name=name: launched.append(name)})())
    us, vs = [u.clone() for u in us], [v.clone() for v in vs]
    sigma, _, _ = pi.forward(mats, us, vs, n_iter)
    assert launched == []
    _check((sigma, us, vs), reference, TOL[torch.float32])
    assert sigma[-1].item() == 0.0


@pytest.mark.parametrize("half_l2", [10**9, 8000, 1], ids=["one_run", "runs", "a_run_per_weight"])
def test_item_schedule_is_one_launch_over_runs_of_weights(monkeypatch, half_l2):
    """Every step and the write-back of the large weights in one launch of _steps_kernel, whatever
    the runs (here an L2 of 8 KB: several weights per run; of 1 byte: every weight its own run); results as
    the reference, the ticket counters left zeroed, the schedule cached per n_iter."""
    monkeypatch.setattr(pi, "PERSISTENT_MAX", 0)
    monkeypatch.setattr(_host, "half_l2_bytes", lambda device: half_l2)
    mats, us, vs = _inputs(SHAPES, torch.float32, seed=9)
    reference = _reference(mats, us, vs, 3)
    launched = []
    real = pi._steps_kernel
    monkeypatch.setattr(pi, "_steps_kernel", type("Counted", (), {
        "__getitem__": lambda self, grid: launched.append(grid) or real[grid]})())
    pi._GROUP_CACHE.clear()
    us, vs = [u.clone() for u in us], [v.clone() for v in vs]
    sigma, _, _ = pi.forward(mats, us, vs, 3)
    assert len(launched) == 1
    _check((sigma, us, vs), reference, TOL[torch.float32])
    (group,) = [g for groups in pi._GROUP_CACHE.values() for g in groups]
    table, tickets, counters = group.schedule(3)
    runs = (counters - 2) // 9  # 3 steps of 3 counted phases per run
    assert runs == {10**9: 1, 8000: runs, 1: len(SHAPES)}[half_l2] and (half_l2 != 8000 or 1 < runs < len(SHAPES))
    # per step every row item twice (partials of W^T u, then W v) and every column item once; the write-back
    assert tickets == 3 * (2 * group.n_rows + group.n_cols) + group.n_rows + group.n_cols
    assert group.schedule(3)[0] is table
    assert not _host._TICKET_COUNTERS[_host._stream_key(DEVICE)].any()


def test_an_item_scheduled_before_what_it_reads_is_an_error(monkeypatch):
    """The interpreter runs programs in ticket order: an item whose inputs come later in the schedule
    raises instead of hanging (on a GPU it would wait forever: interpreter only)."""
    if not _host.interpreting():
        pytest.skip("the check is the interpreter's; a GPU would wait forever")
    monkeypatch.setattr(pi, "PERSISTENT_MAX", 0)
    mats, us, vs = _inputs(SHAPES[:3], torch.float32, seed=10)
    pi._GROUP_CACHE.clear()
    pi.update(mats, us, vs, 2)
    (group,) = [g for groups in pi._GROUP_CACHE.values() for g in groups]
    table, tickets, counters = group.schedule(2)
    rows = table.view(tickets, 5)
    first_phase = group.n_rows  # the partials of step 1, moved to the end of the schedule
    group._schedules[2] = (torch.cat([rows[first_phase:], rows[:first_phase]]).flatten(), tickets, counters)
    with pytest.raises(Exception, match="a program waits on work of a later ticket"):
        pi.update(mats, us, vs, 2)  # the same tensors: the cached group and its schedule
    assert _host._stream_key(DEVICE) not in _host._TICKET_COUNTERS  # dropped: the launch was cut short
