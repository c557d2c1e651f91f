"""SpectralNormRegularizer: finds every conv, persists u/v, estimates the sum of spectral norms."""

import pytest
import torch
from torch import nn

import nvae_fast
from nvae_fast.nn import DepthwiseConv2d, SpectralNormRegularizer


class WeightNormConv(nn.Conv2d):
    """A conv whose effective weight is computed: the regulariser must see that weight."""

    def spectral_weight(self):
        return self.weight * 2.0


def _model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        DepthwiseConv2d(8, 5),
        nn.Sequential(WeightNormConv(8, 6, 1), nn.Linear(4, 4)),
    )


def _exact(model):
    ws = [model[0].weight, model[2].weight, model[3][0].weight * 2.0]
    return sum(torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1), ord=2) for w in ws)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_estimates_the_sum_of_spectral_norms(backend):
    torch.manual_seed(0)
    model = _model()
    reg = SpectralNormRegularizer(model, n_iter=1, init_iter=50)
    assert reg.names == ["0", "2", "3.0"]
    with nvae_fast.use_backend(backend):
        value = reg()
        torch.testing.assert_close(value, _exact(model), rtol=1e-3, atol=0)
        value.backward()
    assert model[0].weight.grad is not None and model[3][0].weight.grad is not None
    assert model[3][1].weight.grad is None


def test_vectors_are_in_the_state_dict_and_resume_warm():
    torch.manual_seed(1)
    model = _model()
    reg = SpectralNormRegularizer(model, n_iter=1, init_iter=30)
    reg()
    state = reg.state_dict()
    assert {"u0", "v0", "u2", "v2", "steps"} <= set(state)
    assert state["v1"].shape == (25,)  # depthwise (8, 1, 5, 5) viewed as (8, 25)
    resumed = SpectralNormRegularizer(model, n_iter=1, init_iter=30)
    resumed.load_state_dict(state)
    a, b = reg(), resumed()
    assert torch.equal(a, b)  # same vectors and step count: the resumed one does not re-initialise


def test_can_be_an_attribute_of_the_model_it_regularises():
    model = _model()
    model.reg = SpectralNormRegularizer(model)
    keys = set(model.state_dict())
    assert "reg.u0" in keys and "0.weight" in keys
    assert sum(1 for _ in model.modules()) == 8  # no cycle: the scanned model is not a submodule


def test_rejects_a_model_without_convolutions():
    with pytest.raises(ValueError, match="no convolution weights"):
        SpectralNormRegularizer(nn.Linear(3, 3))


def test_updates_the_buffers_after_they_are_replaced():
    """The gathered u/v lists follow .double() (which replaces every buffer): the new buffers are updated."""
    conv = nn.Conv2d(3, 4, 3)
    reg = SpectralNormRegularizer(conv, n_iter=1, init_iter=1)
    reg()
    conv.double()
    reg.double()
    before = reg.u0.clone()
    reg()
    assert reg.u0.dtype == torch.float64 and not torch.equal(reg.u0, before)
