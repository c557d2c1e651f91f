"""IAF flow cells: autoregressive masks, unit-diagonal triangular Jacobian (log-det 0), invertibility."""

import pytest
import torch

from nvae_fast.model.flows import IAFCell, PairedFlow, autoregressive_mask

from .._tensors import randomise_


def _order(latent, h, w, mirror):
    """Position of each element (c, i, j) of a (latent, h, w) tensor in the flow's ordering."""
    c, i, j = torch.meshgrid(torch.arange(latent), torch.arange(h), torch.arange(w), indexing="ij")
    pixel = i * w + j
    if mirror:
        pixel = h * w - 1 - pixel
    return (pixel * latent + c).flatten()


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("latent,h,w", [(2, 3, 4), (3, 2, 3)])
def test_iaf_cell_jacobian_is_unit_triangular(mirror, latent, h, w):
    g = torch.Generator().manual_seed(latent * 7 + h + int(mirror))
    cell = IAFCell(latent, mirror=mirror).double()
    randomise_(cell.parameters(), g, scale=0.5)  # no mask hole may hide behind a zero weight
    z = torch.randn(1, latent, h, w, generator=g, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: cell(t)[0], z).reshape(z.numel(), z.numel())
    order = _order(latent, h, w, mirror)
    depends_on_later = order.view(-1, 1) < order.view(1, -1)  # output (row) position before input (column)
    assert torch.all(jac[depends_on_later] == 0)
    torch.testing.assert_close(torch.diagonal(jac), torch.ones(z.numel(), dtype=torch.float64))
    strictly_before = order.view(-1, 1) > order.view(1, -1)
    assert (jac[strictly_before] != 0).float().mean() > 0.3  # the shift does use the past
    log_det = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(cell(z)[1], log_det.view(1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("latent,h,w", [(2, 3, 3), (4, 2, 5)])
def test_paired_flow_inverts(latent, h, w):
    g = torch.Generator().manual_seed(latent + h * w)
    flow = PairedFlow(latent).double()
    randomise_(flow.parameters(), g, scale=0.5)
    z = torch.randn(3, latent, h, w, generator=g, dtype=torch.float64)
    y, log_det = flow(z)
    assert log_det.shape == (3,) and torch.all(log_det == 0)
    assert (y - z).abs().max() > 1e-2  # a real transformation
    torch.testing.assert_close(flow.inverse(y), z, rtol=1e-9, atol=1e-9)


def test_paired_flow_log_det_matches_jacobian():
    g = torch.Generator().manual_seed(11)
    flow = PairedFlow(2).double()
    randomise_(flow.parameters(), g, scale=0.5)
    z = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: flow(t)[0], z).reshape(z.numel(), z.numel())
    torch.testing.assert_close(torch.linalg.slogdet(jac).logabsdet.view(1), flow(z)[1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("c_in,c_out", [(4, 12), (12, 4), (3, 3)])
@pytest.mark.parametrize("strict", [False, True])
def test_mask_centre_tap_orders_channels(c_in, c_out, strict):
    mask = autoregressive_mask(c_in, c_out, 3, 1, strict, mirror=False)
    assert mask.shape == (c_out, c_in, 3, 3)
    assert torch.all(mask[:, :, 0, :] == 1) and torch.all(mask[:, :, 1, 0] == 1)
    assert torch.all(mask[:, :, 2, :] == 0) and torch.all(mask[:, :, 1, 2] == 0)
    r_out, r_in = max(c_out // c_in, 1), max(c_in // c_out, 1)
    for o in range(c_out):
        for i in range(c_in):
            allowed = i // r_in < o // r_out if strict else i // r_in <= o // r_out
            assert mask[o, i, 1, 1] == float(allowed)
    torch.testing.assert_close(autoregressive_mask(c_in, c_out, 3, 1, strict, mirror=True), mask.flip(2, 3))


def test_mask_depthwise_and_errors():
    dw = autoregressive_mask(6, 6, 5, 6, strict=False, mirror=False)
    assert dw.shape == (6, 1, 5, 5) and torch.all(dw[:, 0, 2, 2] == 1)
    assert torch.all(autoregressive_mask(6, 6, 5, 6, strict=True, mirror=False)[:, 0, 2, 2] == 0)
    with pytest.raises(ValueError, match="kernel_size"):
        autoregressive_mask(2, 4, 4, 1, False, False)
    with pytest.raises(ValueError, match="divide"):
        autoregressive_mask(4, 6, 3, 1, False, False)
    with pytest.raises(ValueError, match="groups"):
        autoregressive_mask(4, 8, 3, 4, False, False)
