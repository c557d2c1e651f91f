"""Every backend's kernel set implements its op's contract, the ``typing.Protocol`` next to the op's
reference in ``nvae_fast/ops/<op>.py``: each member present, callable, with the contract's parameters."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

from nvae_fast.ops.bn_swish import BNSwishKernels
from nvae_fast.ops.depthwise_conv2d import DepthwiseConv2dKernels
from nvae_fast.ops.power_iteration import PowerIterationKernels
from nvae_fast.ops.squeeze_excite import SqueezeExciteKernels

CONTRACTS = {
    "bn_swish": BNSwishKernels,
    "depthwise_conv2d": DepthwiseConv2dKernels,
    "squeeze_excite": SqueezeExciteKernels,
    "power_iteration": PowerIterationKernels,
}
KERNEL_PACKAGES = {"triton": "nvae_fast.kernels", "cuda": "nvae_fast.cuda"}


def members(contract) -> dict[str, list[str]]:
    """The contract's methods and their parameter names (without ``self``)."""
    return {
        name: list(inspect.signature(fn).parameters)[1:]
        for name, fn in vars(contract).items()
        if inspect.isfunction(fn) and not name.startswith("_")
    }


def violations(contract, kernels) -> list[str]:
    """How ``kernels`` (a module or class) departs from ``contract``; empty when it conforms."""
    found = []
    for name, params in members(contract).items():
        fn = getattr(kernels, name, None)
        if fn is None or not callable(fn):
            found.append(f"{name}: missing")
            continue
        got = list(inspect.signature(fn).parameters)
        if got != params:
            found.append(f"{name}: parameters {got}, contract {params}")
    return found


def kernel_set(op: str, backend_name: str):
    if backend_name == "torch":
        return importlib.import_module(f"nvae_fast.ops.{op}").TorchKernels
    return importlib.import_module(f"{KERNEL_PACKAGES[backend_name]}.{op}")


def test_every_contract_has_supports_and_kernels():
    for op, contract in CONTRACTS.items():
        names = members(contract)
        assert "supports" in names and len(names) >= 3, (op, names)


@pytest.mark.parametrize("backend_name", ["torch", "triton", "cuda"])
@pytest.mark.parametrize("op", sorted(CONTRACTS))
def test_kernel_set_implements_the_contract(op, backend_name):
    assert violations(CONTRACTS[op], kernel_set(op, backend_name)) == []


def test_a_departing_kernel_set_is_reported():
    torch_kernels = kernel_set("bn_swish", "torch")
    partial = types.SimpleNamespace(**{n: getattr(torch_kernels, n) for n in members(BNSwishKernels) if n != "backward"})
    partial.normalize = lambda x, mean, invstd, weight: x
    assert violations(BNSwishKernels, partial) == [
        "normalize: parameters ['x', 'mean', 'invstd', 'weight'], contract ['x', 'mean', 'invstd', 'weight', 'bias']",
        "backward: missing",
    ]
