"""Configuration of an NVAE: :class:`NVAEConfig` and the named presets.

The presets ``mnist``, ``cifar10`` and ``celeba64`` reproduce the architecture settings of the public
training commands of NVAE (Vahdat & Kautz 2020); ``tiny`` is for tests and ``digits`` for the README's
CPU example (16×16 greyscale digits). A config is a plain dataclass whose :meth:`NVAEConfig.to_dict`
is JSON-able and round-trips through :meth:`NVAEConfig.from_dict`; checkpoints store that dict.

Geometry: the encoder works at ``image_size / 2**num_preprocess_blocks`` after pre-processing, and each
latent scale halves it again, so ``image_size`` must be divisible by
``2**(num_preprocess_blocks + num_latent_scales - 1)``; the channel count doubles with every halving.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["NVAEConfig", "PRESETS", "preset", "LIKELIHOODS"]

LIKELIHOODS = ("dmol", "bernoulli")


@dataclass
class NVAEConfig:
    """All architecture settings of an :class:`~nvae_fast.model.NVAE` (names follow the paper).

    Data: ``image_channels`` (1 or 3 for ``dmol``), ``image_size`` (square), ``likelihood``
    (``'dmol'``: discretised mixture of ``num_mix`` logistics over ``2**num_x_bits`` levels;
    ``'bernoulli'``: binary pixels, x thresholded at 0.5), ``crop`` (border pixels left out of the
    likelihood, e.g. 2 for MNIST zero-padded from 28 to 32).

    Network: ``channels_enc``/``channels_dec`` at full resolution; pre-processing of
    ``num_preprocess_blocks`` blocks of ``num_preprocess_cells`` residual cells (the last one of each
    block halves the resolution), post-processing likewise with up-sampling cells;
    ``num_latent_scales`` scales with ``num_groups_per_scale`` latent groups of ``num_latent_per_group``
    channels each at the finest scale (halved per coarser scale, at least ``min_groups_per_scale``, when
    ``adaptive_groups``); ``num_cell_per_cond_enc``/``_dec`` cells between groups; ``num_flows`` paired
    IAF cells per group on the posterior; ``dec_expand``/``post_expand`` the inverted-residual expansion
    of decoder/post-processing cells, ``dec_kernel`` their depthwise kernel size.

    Training constants of the reference configuration: ``bn_momentum``, ``bn_eps``,
    ``spectral_iters`` (power-iteration steps per training step), ``reg_lambda`` (the spectral and BN
    regularisation weight) and ``reg_lambda_init`` (its start value when annealed, else ``None``).
    """

    image_channels: int = 3
    image_size: int = 32
    likelihood: str = "dmol"
    num_mix: int = 10
    num_x_bits: int = 8
    crop: int = 0
    channels_enc: int = 32
    channels_dec: int = 32
    num_preprocess_blocks: int = 1
    num_preprocess_cells: int = 2
    num_postprocess_blocks: int = 1
    num_postprocess_cells: int = 2
    num_latent_scales: int = 1
    num_groups_per_scale: int = 10
    adaptive_groups: bool = False
    min_groups_per_scale: int = 1
    num_latent_per_group: int = 20
    num_cell_per_cond_enc: int = 2
    num_cell_per_cond_dec: int = 2
    num_flows: int = 0
    use_se: bool = True
    residual_posterior: bool = True
    dec_expand: int = 6
    post_expand: int = 3
    dec_kernel: int = 5
    bn_momentum: float = 0.05
    bn_eps: float = 1e-5
    spectral_iters: int = 4
    reg_lambda: float = 1e-2
    reg_lambda_init: float | None = None

    def __post_init__(self) -> None:
        positive = (
            "image_channels", "image_size", "num_mix", "num_x_bits", "channels_enc", "channels_dec",
            "num_preprocess_cells", "num_postprocess_cells", "num_latent_scales", "num_groups_per_scale",
            "min_groups_per_scale", "num_latent_per_group", "dec_expand", "post_expand", "dec_kernel",
            "spectral_iters",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"NVAEConfig.{name} must be a positive int, got {value!r}")
        for name in ("num_preprocess_blocks", "num_postprocess_blocks", "num_cell_per_cond_enc",
                     "num_cell_per_cond_dec", "num_flows", "crop"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"NVAEConfig.{name} must be a non-negative int, got {value!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"NVAEConfig.likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.likelihood == "dmol" and self.image_channels not in (1, 3):
            raise ValueError(f"NVAEConfig.image_channels must be 1 or 3 for likelihood 'dmol', got {self.image_channels}")
        if self.num_x_bits > 8:
            raise ValueError(f"NVAEConfig.num_x_bits must be at most 8, got {self.num_x_bits}")
        if self.num_preprocess_blocks != self.num_postprocess_blocks:
            raise ValueError(
                "NVAEConfig.num_postprocess_blocks must equal num_preprocess_blocks (the decoder must return to "
                f"full resolution), got {self.num_postprocess_blocks} and {self.num_preprocess_blocks}"
            )
        if self.dec_kernel % 2 != 1:
            raise ValueError(f"NVAEConfig.dec_kernel must be odd, got {self.dec_kernel}")
        factor = 2 ** (self.num_preprocess_blocks + self.num_latent_scales - 1)
        if self.image_size % factor:
            raise ValueError(
                f"NVAEConfig.image_size must be divisible by 2**(num_preprocess_blocks + num_latent_scales - 1) = "
                f"{factor}, got {self.image_size}"
            )
        if 2 * self.crop >= self.image_size:
            raise ValueError(f"NVAEConfig.crop must be less than image_size / 2, got {self.crop}")
        for name in ("bn_momentum", "bn_eps", "reg_lambda"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ValueError(f"NVAEConfig.{name} must be a non-negative number, got {getattr(self, name)!r}")
        if self.reg_lambda_init is not None and not (self.reg_lambda_init > 0 and self.reg_lambda > 0):
            raise ValueError(
                f"NVAEConfig.reg_lambda_init must be positive (and reg_lambda too) to anneal, got "
                f"{self.reg_lambda_init!r} and {self.reg_lambda!r}"
            )

    @property
    def groups_per_scale(self) -> list[int]:
        """Latent groups per scale, finest scale first (the encoder's order)."""
        groups, n = [], self.num_groups_per_scale
        for _ in range(self.num_latent_scales):
            groups.append(n)
            if self.adaptive_groups:
                n = max(self.min_groups_per_scale, n // 2)
        return groups

    @property
    def num_groups(self) -> int:
        """Total number of latent groups."""
        return sum(self.groups_per_scale)

    @property
    def data_dims(self) -> int:
        """Number of modelled data dimensions (pixels times channels, inside the crop)."""
        side = self.image_size - 2 * self.crop
        return self.image_channels * side * side

    def to_dict(self) -> dict:
        """A plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NVAEConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (missing ones take their defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"NVAEConfig.from_dict: unknown keys {unknown}")
        return cls(**data)


PRESETS: dict[str, dict] = {
    # Tests: fast on CPU; two scales, adaptive groups, a flow and a colour dmol output.
    "tiny": dict(
        image_channels=3, image_size=16, likelihood="dmol", num_mix=3, channels_enc=8, channels_dec=8,
        num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1, num_postprocess_cells=2,
        num_latent_scales=2, num_groups_per_scale=2, adaptive_groups=True, num_latent_per_group=4,
        num_cell_per_cond_enc=1, num_cell_per_cond_dec=1, num_flows=1,
    ),
    # README example: scikit-learn digits upsampled to 16x16 greyscale, a few CPU minutes. The source images
    # have 17 grey levels, so 4 bits (16 levels) keep them and the likelihood sharpens ~3x sooner than at 8.
    "digits": dict(
        image_channels=1, image_size=16, likelihood="dmol", num_mix=3, num_x_bits=4, channels_enc=16, channels_dec=16,
        num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1, num_postprocess_cells=2,
        num_latent_scales=2, num_groups_per_scale=4, adaptive_groups=True, num_latent_per_group=8,
        num_cell_per_cond_enc=1, num_cell_per_cond_dec=1, num_flows=0,
    ),
    # Public MNIST command: binarised MNIST zero-padded to 32x32, likelihood on the central 28x28.
    "mnist": dict(
        image_channels=1, image_size=32, crop=2, likelihood="bernoulli", channels_enc=32, channels_dec=32,
        num_preprocess_blocks=2, num_preprocess_cells=3, num_postprocess_blocks=2, num_postprocess_cells=3,
        num_latent_scales=2, num_groups_per_scale=10, adaptive_groups=True, num_latent_per_group=20,
        num_cell_per_cond_enc=2, num_cell_per_cond_dec=2, num_flows=0, reg_lambda=1e-2,
    ),
    # Public CIFAR-10 command (single-scale model).
    "cifar10": dict(
        image_channels=3, image_size=32, likelihood="dmol", num_mix=10, channels_enc=128, channels_dec=128,
        num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1, num_postprocess_cells=2,
        num_latent_scales=1, num_groups_per_scale=30, adaptive_groups=False, num_latent_per_group=20,
        num_cell_per_cond_enc=2, num_cell_per_cond_dec=2, num_flows=1, reg_lambda=1e-2,
    ),
    # Public CelebA 64 command.
    "celeba64": dict(
        image_channels=3, image_size=64, likelihood="dmol", num_mix=10, channels_enc=64, channels_dec=64,
        num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1, num_postprocess_cells=2,
        num_latent_scales=3, num_groups_per_scale=20, adaptive_groups=True, num_latent_per_group=20,
        num_cell_per_cond_enc=2, num_cell_per_cond_dec=2, num_flows=1, reg_lambda=1e-1,
    ),
}


def preset(name: str, **overrides) -> NVAEConfig:
    """The named preset (one of :data:`PRESETS`) with ``overrides`` applied to its fields."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown name {name!r}; choose one of {sorted(PRESETS)}")
    return NVAEConfig.from_dict({**PRESETS[name], **overrides})
