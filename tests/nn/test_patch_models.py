"""nvae_fast.patch on the real EfficientNet/MobileNet definitions of torchvision and timm (random weights).

For each model, in train and in eval mode, in float64 on the ``torch`` backend: the patched model's output,
every parameter gradient and every state-dict entry (BN running statistics included) after a forward and
backward match the unpatched model's; after an SGD step on both the outputs still match; the state dict has
the same keys and loads into either model. The report's counts are pinned per model.
"""

import copy

import pytest
import torch

import nvae_fast

torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed (scripts/setup.sh installs it)")


def _timm(name):
    timm = pytest.importorskip("timm", reason="timm is not installed (scripts/setup.sh installs it)")
    return timm.create_model(name, pretrained=False)


# name: (builder, {report field: count}); the counts are what each definition holds.
MODELS = {
    "tv_efficientnet_b0": (
        lambda: torchvision.models.efficientnet_b0(),
        {"bn_swish": 33, "depthwise": 16, "squeeze_excite": 16, "bn_swish_conv": 15, "skipped": 0},
    ),
    "tv_efficientnet_v2_s": (
        lambda: torchvision.models.efficientnet_v2_s(),
        {"bn_swish": 72, "depthwise": 30, "squeeze_excite": 30, "bn_swish_conv": 38, "skipped": 0},
    ),
    "tv_mobilenet_v2": (
        lambda: torchvision.models.mobilenet_v2(),
        {"bn_swish": 0, "depthwise": 17, "squeeze_excite": 0, "bn_swish_conv": 0, "skipped": 35},  # BN+ReLU6
    ),
    "timm_efficientnet_b0": (
        lambda: _timm("efficientnet_b0"),
        {"bn_swish": 33, "depthwise": 16, "squeeze_excite": 16, "bn_swish_conv": 15, "skipped": 0},
    ),
}


def _step(model, x, seed):
    torch.manual_seed(seed)  # stochastic depth and dropout draw the same masks in both models
    out = model(x)
    out.square().mean().backward()
    return out


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(MODELS))
def test_patched_model_matches_and_trains(name, train):
    build, counts = MODELS[name]
    torch.manual_seed(0)
    reference = build().double().train(train)
    model = copy.deepcopy(reference)
    with nvae_fast.use_backend("torch"):
        report = nvae_fast.patch(model)
        print(report)
        assert {field: len(getattr(report, field)) for field in counts} == counts
        if name == "tv_mobilenet_v2":
            assert {reason for _, reason in report.skipped} == {"BatchNorm2d followed by ReLU6: only SiLU is fused"}
        assert list(model.state_dict()) == list(reference.state_dict())
        x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
        for step in range(2):
            out_ref, out = _step(reference, x, step), _step(model, x, step)
            torch.testing.assert_close(out, out_ref, msg=f"step {step}: output")
            params = dict(model.named_parameters())
            for key, p in reference.named_parameters():
                torch.testing.assert_close(params[key].grad, p.grad, msg=f"step {step}: grad of {key}")
            state = model.state_dict()
            for key, value in reference.state_dict().items():
                torch.testing.assert_close(state[key], value, msg=f"step {step}: state {key}")
            for m in (model, reference):
                torch.optim.SGD(m.parameters(), lr=0.1).step()
                m.zero_grad()
    build().double().load_state_dict(model.state_dict())
    model.load_state_dict(reference.state_dict())


def test_patched_efficientnet_b0_saves_at_most_0_6_of_the_bytes():
    """benchmarks.patch_memory at a small input: one training step of torchvision's efficientnet_b0."""
    from benchmarks.patch_memory import measure

    result = measure("efficientnet_b0", size=64, batch=2)
    assert result["ratio"] <= 0.6, result
