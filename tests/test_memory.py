"""Saved-for-backward accounting, and the lean backends saving less than the reference."""

import pytest
import torch

import nvae_fast
from nvae_fast.memory import saved_tensor_bytes
from nvae_fast.nn import BNSwish, DepthwiseConv2d, SqueezeExcite


def test_counts_each_storage_once():
    x = torch.randn(64, 64, requires_grad=True)

    def square_twice(x):
        return x * x  # saves x twice: one storage

    m = saved_tensor_bytes(square_twice, x)
    assert m.num_tensors == 2
    assert m.saved_bytes == x.numel() * 4
    assert m.peak_cuda_bytes is None or torch.cuda.is_available()


def test_excluded_storages_are_not_counted():
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(8, 8, requires_grad=True)
    m = saved_tensor_bytes(lambda: x @ w, exclude=[w])
    assert m.saved_bytes == x.numel() * 4 and m.num_tensors == 1


def _saved(module, x, backend):
    with nvae_fast.use_backend(backend):
        return saved_tensor_bytes(module, x).saved_bytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bn_swish_saves_about_half_of_the_reference(dtype):
    """reference keeps x and the BN output (for SiLU); the lean op keeps x and per-channel stats only."""
    x = torch.randn(8, 32, 16, 16, dtype=dtype, requires_grad=True)
    module = BNSwish(32)
    lean, ref = _saved(module, x, "torch"), _saved(module, x, "reference")
    x_bytes = x.numel() * x.element_size()
    assert ref >= 2 * x_bytes
    assert lean < 1.02 * x_bytes
    assert lean / ref < 0.52, (lean, ref)


def test_depthwise_and_se_save_x_once():
    """Both keep x (plus weights and per-(n, c) vectors): never a second activation-sized tensor."""
    x = torch.randn(4, 16, 12, 12, requires_grad=True)
    x_bytes = x.numel() * x.element_size()
    for module in (DepthwiseConv2d(16, 5), SqueezeExcite(16)):
        lean = _saved(module, x, "torch")
        assert x_bytes <= lean < 1.2 * x_bytes, (type(module).__name__, lean, x_bytes)
