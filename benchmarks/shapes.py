"""The shapes the op benchmarks run on.

Shape sets (the ``shape_set`` column of a result row names all sets a shape belongs to):

``cifar10``, ``celeba64``, ``celebahq256``
    the distinct op inputs that NVAE's presets produce in one training step at the paper's per-GPU batch
    size. When ``nvae_fast.model`` can build a preset they are read from the model with forward hooks
    (:mod:`benchmarks.model_shapes`, source ``model-hooks``); otherwise they are derived here from the
    paper's configurations (source ``paper-config``), see :func:`paper_op_shapes`.
``sweep``
    one op at growing spatial size (or number of weights), to show how the cost grows.
``target``
    the shapes named by the performance targets (depthwise 5x5 at N=32, C=768, 16x16 and 32x32).

Paper configuration (source ``paper-config``): NVAE, Vahdat & Kautz 2020, arXiv:2007.03898, Table 6
(per-GPU batch size, number of latent scales, spatial size of z) and the authors' published training
commands (initial channels, one pre- and one post-processing block of two cells, 30 groups of two cells
for CIFAR-10, 20-channel latents, expansion 6 in the decoder and 3 in post-processing). The cells are
those of the paper's Fig. 3: the encoder cell BN-Swish-conv3x3-BN-Swish-conv3x3-SE, the generative cell
BN-conv1x1(E*Cin)-BN-Swish-dw5x5-BN-Swish-conv1x1(Cout)-BN-SE. Down-sampling cells halve the resolution
and double the channels; up-sampling cells up-sample first and halve the channels. This reproduces the
paper's latent sizes (CIFAR-10 16x16; CelebA-64 32, 16, 8; 256x256 128 ... 8) but is an approximation
of the real model's bookkeeping: when ``nvae_fast.model`` can build the preset, its hooks replace it.

| preset      | res | batch | C0 | scales (C x res)                                    |
|-------------|-----|-------|----|-----------------------------------------------------|
| cifar10     | 32  | 32    | 128| 256x16                                              |
| celeba64    | 64  | 16    | 64 | 128x32, 256x16, 512x8                               |
| celebahq256 | 256 | 4     | 30 | 60x128, 120x64, 240x32, 480x16, 960x8               |
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

OPS = ("bn_swish", "depthwise_conv2d", "squeeze_excite", "power_iteration")
PRESETS = ("cifar10", "celeba64", "celebahq256")
SETS = PRESETS + ("sweep", "target")

POWER_ITERATIONS = 4
DEC_EXPAND, POST_EXPAND = 6, 3
LATENT_CHANNELS = 20
SE_REDUCTION, SE_MIN_HIDDEN = 16, 4
DW_KERNEL = 5


def se_hidden(channels: int) -> int:
    """Hidden width of the squeeze-excite MLP: ``max(C // 16, 4)`` (as ``nvae_fast.nn.SqueezeExcite``)."""
    return max(channels // SE_REDUCTION, SE_MIN_HIDDEN)


@dataclass(frozen=True)
class OpShape:
    """One op input configuration.

    ``x`` is (N, C, H, W) for the three activation ops; ``kernel`` the depthwise kernel size (stride 1,
    padding ``kernel // 2``, so the output has x's shape); ``hidden`` the squeeze-excite width;
    ``weights`` the conv-weight shapes of one power-iteration call, ``n_iter`` its step count.
    """

    op: str
    x: tuple[int, int, int, int] | None = None
    kernel: int | None = None
    hidden: int | None = None
    weights: tuple[tuple[int, ...], ...] | None = None
    n_iter: int | None = None
    sets: tuple[str, ...] = ()
    source: str = ""

    @property
    def key(self) -> tuple:
        """Identity of the configuration, independent of which sets list it."""
        return (self.op, self.x, self.kernel, self.hidden, self.weights, self.n_iter)

    @property
    def size(self) -> int:
        """Elements of x (activation ops) or of all weights (power iteration): the x axis of plots."""
        if self.op == "power_iteration":
            return sum(math.prod(w) for w in self.weights)
        return math.prod(self.x)

    @property
    def label(self) -> str:
        if self.op == "power_iteration":
            return f"{len(self.weights)}W-{self.size / 1e6:.3g}M-it{self.n_iter}"
        text = "x".join(str(d) for d in self.x)
        if self.op == "depthwise_conv2d":
            text += f"-k{self.kernel}"
        if self.op == "squeeze_excite":
            text += f"-h{self.hidden}"
        return text


def activation_shape(
    op: str, x: tuple[int, int, int, int], sets, source: str, kernel: int = DW_KERNEL, hidden: int | None = None
) -> OpShape:
    """An :class:`OpShape` for bn_swish / depthwise_conv2d / squeeze_excite on input ``x``
    (``hidden`` defaults to :func:`se_hidden` of the channels)."""
    x = tuple(int(d) for d in x)
    return OpShape(
        op=op,
        x=x,
        kernel=kernel if op == "depthwise_conv2d" else None,
        hidden=(hidden or se_hidden(x[1])) if op == "squeeze_excite" else None,
        sets=tuple(sets),
        source=source,
    )


@dataclass(frozen=True)
class PaperPreset:
    """The hyperparameters of one NVAE configuration that determine the op shapes (see module doc)."""

    name: str
    resolution: int
    batch: int
    channels: int
    latent_scales: int
    groups: int  # groups per scale (only used for the power-iteration weight list)
    cells_per_group: int = 2
    preprocess_blocks: int = 1
    postprocess_blocks: int = 1


PAPER_PRESETS = {
    "cifar10": PaperPreset("cifar10", resolution=32, batch=32, channels=128, latent_scales=1, groups=30),
    "celeba64": PaperPreset("celeba64", resolution=64, batch=16, channels=64, latent_scales=3, groups=20),
    "celebahq256": PaperPreset("celebahq256", resolution=256, batch=4, channels=30, latent_scales=5, groups=16),
}


def paper_op_shapes(p: PaperPreset) -> dict[str, list[tuple[int, int, int, int]]]:
    """Input shapes (with repeats) of bn_swish, depthwise_conv2d and squeeze_excite in preset ``p``."""
    n = p.batch
    found: dict[str, list] = {"bn_swish": [], "depthwise_conv2d": [], "squeeze_excite": []}

    def enc_normal(c, r):
        found["bn_swish"] += [(n, c, r, r)] * 2
        found["squeeze_excite"].append((n, c, r, r))

    def enc_down(c, r):
        found["bn_swish"] += [(n, c, r, r), (n, 2 * c, r // 2, r // 2)]
        found["squeeze_excite"].append((n, 2 * c, r // 2, r // 2))

    def gen(c_in, c_out, r_out, expand):  # generative cell (normal or up) producing (c_out, r_out)
        wide = (n, expand * c_in, r_out, r_out)
        found["bn_swish"] += [wide] * 2
        found["depthwise_conv2d"].append(wide)
        found["squeeze_excite"].append((n, c_out, r_out, r_out))

    c, r = p.channels, p.resolution
    for _ in range(p.preprocess_blocks):
        enc_normal(c, r)
        enc_down(c, r)
        c, r = 2 * c, r // 2
    finest = (c, r)
    for scale in range(p.latent_scales):
        enc_normal(c, r)
        gen(c, c, r, DEC_EXPAND)
        if scale < p.latent_scales - 1:
            enc_down(c, r)
            gen(2 * c, c, r, DEC_EXPAND)  # the decoder's up cell from (2c, r/2) to (c, r)
            c, r = 2 * c, r // 2
    c, r = finest
    for _ in range(p.postprocess_blocks):
        gen(c, c // 2, 2 * r, POST_EXPAND)  # up cell
        c, r = c // 2, 2 * r
        gen(c, c, r, POST_EXPAND)  # normal cell
    return found


def paper_conv_weights(p: PaperPreset) -> tuple[tuple[int, ...], ...]:
    """Approximate conv-weight shapes (every conv, as the spectral regulariser sees them) of a
    single-scale preset (CIFAR-10): stem, pre-processing, encoder tower (groups x cells of two 3x3
    convs), encoder/decoder samplers (3x3 to 2*20 channels), decoder combiners (1x1 from C+20), decoder
    tower (generative cells: 1x1 expand, 5x5 depthwise, 1x1 project; none in the top group),
    post-processing, and the 3x3 output head to a 10-component logistic mixture (100 channels).
    """
    if p.latent_scales != 1:
        raise ValueError(f"paper_conv_weights: preset {p.name!r} has {p.latent_scales} scales; only 1 is modelled")
    c0, z = p.channels, LATENT_CHANNELS
    c = c0 * 2**p.preprocess_blocks
    w: list[tuple[int, ...]] = [(c0, 3, 3, 3)]
    ch = c0
    for _ in range(p.preprocess_blocks):
        w += [(ch, ch, 3, 3)] * 2 + [(2 * ch, ch, 3, 3), (2 * ch, 2 * ch, 3, 3), (2 * ch, ch, 1, 1)]
        ch *= 2

    def gen_cell(c_in, c_out, expand):
        e = expand * c_in
        return [(e, c_in, 1, 1), (e, 1, DW_KERNEL, DW_KERNEL), (c_out, e, 1, 1)]

    w += [(c, c, 3, 3)] * (2 * p.groups * p.cells_per_group)
    w += [(2 * z, c, 3, 3)] * (2 * p.groups - 1)
    w += [(c, c + z, 1, 1)] * (p.groups - 1)
    for _ in range((p.groups - 1) * p.cells_per_group):
        w += gen_cell(c, c, DEC_EXPAND)
    for _ in range(p.postprocess_blocks):
        w += gen_cell(c, c // 2, POST_EXPAND) + [(c // 2, c, 1, 1)] + gen_cell(c // 2, c // 2, POST_EXPAND)
        c //= 2
    w.append((100, c, 3, 3))
    return tuple(w)


def _merge(shapes: list[OpShape]) -> list[OpShape]:
    """Merge configurations listed by several sets into one shape carrying all their set names."""
    merged: dict[tuple, OpShape] = {}
    for s in shapes:
        old = merged.get(s.key)
        if old is None:
            merged[s.key] = s
        else:
            sets = old.sets + tuple(name for name in s.sets if name not in old.sets)
            source = old.source if s.source in old.source else f"{old.source}; {s.source}"
            merged[s.key] = dataclasses.replace(old, sets=sets, source=source)
    return list(merged.values())


def paper_preset_shapes(name: str) -> list[OpShape]:
    """The op shapes of preset ``name`` from the paper configuration (see module doc)."""
    p = PAPER_PRESETS[name]
    source = "paper-config"
    shapes = [
        activation_shape(op, x, (name,), source)
        for op, xs in paper_op_shapes(p).items()
        for x in dict.fromkeys(xs)
    ]
    if p.latent_scales == 1:
        shapes.append(OpShape("power_iteration", weights=paper_conv_weights(p), n_iter=POWER_ITERATIONS, sets=(name,), source=source))
    return shapes


def sweep_shapes() -> list[OpShape]:
    """Growing sizes per op (source ``sweep``)."""
    shapes = [activation_shape("bn_swish", (32, 128, s, s), ("sweep",), "sweep") for s in (8, 16, 32, 64, 128)]
    shapes += [activation_shape("depthwise_conv2d", (32, 768, s, s), ("sweep",), "sweep") for s in (4, 8, 16, 32, 64)]
    shapes += [activation_shape("squeeze_excite", (32, 256, s, s), ("sweep",), "sweep") for s in (4, 8, 16, 32, 64)]
    shapes += [
        OpShape("power_iteration", weights=((256, 256, 3, 3),) * k, n_iter=POWER_ITERATIONS, sets=("sweep",), source="sweep")
        for k in (4, 16, 64, 256)
    ]
    return shapes


def target_shapes() -> list[OpShape]:
    """Shapes named by the performance targets (see :mod:`benchmarks.targets`)."""
    return [activation_shape("depthwise_conv2d", (32, 768, s, s), ("target",), "issue-target") for s in (16, 32)]


def smoke_shapes() -> list[OpShape]:
    """Tiny, odd shapes for the CPU smoke run: two sizes per op so every plot has a line."""
    src = "smoke"
    shapes = []
    for hw in ((5, 7), (9, 11)):
        shapes.append(activation_shape("bn_swish", (2, 3) + hw, ("sweep",), src))
        shapes.append(activation_shape("depthwise_conv2d", (2, 4) + hw, ("sweep",), src))
        shapes.append(activation_shape("squeeze_excite", (2, 8) + hw, ("sweep",), src))
    for k in (1, 2):
        weights = ((4, 3, 3, 3), (6, 4, 1, 1), (4, 1, 5, 5)) * k + ((5, 3, 3, 3),)
        shapes.append(OpShape("power_iteration", weights=weights, n_iter=POWER_ITERATIONS, sets=("sweep",), source=src))
    return shapes


def plan(smoke: bool, sets: tuple[str, ...] = SETS, ops: tuple[str, ...] = OPS) -> list[OpShape]:
    """Every shape to benchmark: smoke shapes, or the requested sets (presets from the model if it can be
    built, else from the paper), merged across sets and restricted to ``ops``."""
    from . import model_shapes

    if smoke:
        shapes = smoke_shapes()
    else:
        shapes = []
        for name in PRESETS:
            if name in sets:
                shapes += model_shapes.preset_shapes(name)
        if "sweep" in sets:
            shapes += sweep_shapes()
        if "target" in sets:
            shapes += target_shapes()
    return [s for s in _merge(shapes) if s.op in ops]
