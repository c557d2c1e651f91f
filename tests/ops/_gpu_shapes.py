"""Op-test shapes that take the multi-tile and split-reduction paths of the triton and cuda kernels on a
132-SM GPU (H100 SXM / H200).

The other op-test shapes fit one tile and one part per reduction there, so on a GPU those paths never
ran. The plans below are for 132 SMs, float32/float16/bfloat16, both native layouts (a strided x is
copied to NCHW first); ``test_gpu_plans.py`` asserts them from the host code itself (the Triton
modules' plan functions with 132 SMs; the CUDA launch code of ``csrc/`` run through
``tests/cuda/launch_recorder.cpp``, which records the launches of a 132-SM device), so it fails when a
threshold moves and a shape stops taking its path. Where the plans come from:

* Triton: ``kernels/_host.py`` ``tile`` (about 4096-element tiles, at most 1024 columns NCHW / 128 NHWC)
  and ``split`` (``want = cdiv(WAVES * sm_count, programs)``, WAVES = 4: 528 programs in all, at most
  one part per tile); ``bn_swish._reduce_plan`` / ``squeeze_excite._reduce_plan`` (grid (outputs, split),
  program s folds tiles s, s + split, ...), ``bn_swish._one_read_tile`` (the one-read training forward
  only while pow2(N) * pow2(H*W) <= 16384, NCHW, resp. pow2(N*H*W) <= 16384, NHWC);
  ``depthwise_conv2d._gpu_blocks`` (NCHW: one channel by up to 1024 pixels, at most 64 wide; NHWC: up to
  64 channels by an 8-wide tile, about 2048 elements in all) and ``_chunks`` (weight gradient:
  ``want = cdiv(528, channel blocks)`` chunks of ``per_chunk`` tiles); ``power_iteration.update`` /
  ``_split`` (resident when a weight fits one 32 x 128 tile, persistent loops over its tiles up to
  ``PERSISTENT_MAX`` = 2**18 elements, above that row and column items).
* CUDA: ``csrc/launch.h`` ``target_blocks`` = 8 x SMs = 1056; ``csrc/reduce.cuh``
  ``launch_channel_reduce`` (NCHW: grid (outputs / groups, parts), ``parts = clamp(cdiv(1056, blocks), 1,
  vectors / (TPR * 4))``; NHWC: grid (channel blocks, groups, parts) with ``parts = clamp(cdiv(1056,
  blocks), 1, rows / (ty * 4))``; a finalize kernel merges the parts); ``csrc/elementwise.cuh``
  ``launch_channel_map`` (``blocks_x = clamp(cdiv(1056, N), 1, cdiv(vectors, 256))``: a grid-stride loop
  once a sample has more than blocks_x * 256 vectors); ``csrc/depthwise_conv2d.cu`` ``plan_tiles`` /
  ``tile_grid`` (grid.y = spatial tiles) and ``dwconv2d_backward_weight`` (``parts = clamp(cdiv(1056,
  groups), 1, items)`` over the (sample, tile) items, part s takes items s, s + parts, ...); ``csrc/power_iteration.cu``
  ``build_batch`` (one block per 64 x 256 tile).

Without a GPU, tests/ops runs these shapes with the cuda backend in the emulation (132 SMs, so the same
plans; float32, NCHW and channels_last, a few seconds each) and, for power_iteration, with triton in the
interpreter; the other triton cases need a GPU (the interpreter plans for 2 SMs, and takes tens of
seconds per case on these shapes).
"""

from __future__ import annotations

import pytest
import torch

from .._tensors import LAYOUTS

ON_GPU = torch.cuda.is_available()

# bn_swish x (N, C, H, W); N*H*W = 17425 values per channel.
#   triton NCHW: one-read forward off (pow2(17) * pow2(1025) = 65536 > 16384), 4 x 1024 tiles: 5 x 2 = 10
#     tiles per channel, split = cdiv(528, 65) = 9: grid (65, 9), program 0 folds tiles 0 and 9.
#   triton NHWC: one-read off (pow2(17425) > 16384), 32 x 128 tiles: 545 row tiles, 1 channel block,
#     split = 528: grid (1, 528), programs 0-16 fold two tiles.
#   cuda NCHW (scalar: H*W odd): reduce_inner grid (65, 17): 17 parts of 1025 values, 5 steps of 256
#     threads each, + finalize; channel_map grid (63, 17): 66625 values per sample, 5 grid-stride steps.
#   cuda NHWC (scalar: C odd): reduce_columns grid (3, 1, 349), block (32, 8): 349 parts of 50 rows,
#     7 steps of 8 rows, + finalize; channel_map as NCHW.
BN_SHAPES = [(17, 65, 25, 41)]

# squeeze_excite (x (N, C, H, W), hidden); H*W = 4097.
#   triton NCHW: 4 x 1024 tiles of the (N*C) x (H*W) matrix: 132 row blocks, 5 column tiles,
#     split = cdiv(528, 132) = 4: program 0 of each row block folds tiles 0 and 4.
#   triton NHWC: 32 x 128 tiles of each sample's (H*W) x C matrix: 5 programs, 129 row tiles,
#     split = cdiv(528, 5) = 106: programs 0-22 fold two tiles.
#   cuda NCHW: se_reduce_kernel grid (212, 5): 17 parts of 242 pixels per plane, 1785 (channel, part)
#     warps' work on 1696 warps per sample (some take two); se_map (scale, dx) grid (212, 5): 315 items
#     per sample (a plane's 1366-pixel thirds), some blocks take two.
#   cuda NHWC: se_reduce_kernel grid (258, 5): 129 parts of 32 pixels times 2 channel groups, each
#     block 2 32-channel columns of 4 steps of 8 rows; se_map grid (212, 5): 212 items per sample
#     (32 channels times 78-pixel parts).
SE_CASES = [((5, 105, 17, 241), 7)]

# depthwise_conv2d (x shape, kernel, stride, padding) as in test_depthwise_conv2d.CASES.
#   (24, 132, 17, 33) 5x5 "same" (NVAE's decoder conv; cuda's register-window kernel), y 17 x 33:
#     triton NCHW: 16 x 64-pixel tiles: 2 per (n, c) plane (forward and input gradient); weight
#       gradient: 48 tiles, 132 channel blocks -> 4 chunks of 12 tiles.
#     triton NHWC: 64 channels x 4 x 8 pixels: 25 tiles per image, 3 channel blocks; weight gradient:
#       600 tiles -> 150 chunks of 4.
#     cuda NCHW: dw_window grid (3168, 2) (two 32-column tiles), input gradient likewise; weight
#       gradient: 9 channels x one 17 x 33 tile per image, grid (15, 24): 24 parts, one per sample.
#     cuda NHWC: dw_window grid (408, 2) (8 channels by 20 x 32 outputs: 32 columns of threads, five
#       groups of 4 rows each); weight gradient grid (17, 24) (float32: 8 channels, 16-byte loads) or
#       (15, 24) (16-bit types: C % 8 != 0, scalar).
#   (38, 27, 33, 65) 3x3, stride 2, padding 1 (cuda's general forward and input-gradient kernels),
#     y 17 x 33:
#     triton NCHW: 2 tiles per plane (forward; input gradient: per residue class of the 17 x 33 grid);
#       weight gradient: 76 tiles, 27 channel blocks -> 19 chunks of 4.
#     triton NHWC: 32 channels x 8 x 8 pixels: 15 tiles per image; weight gradient: 570 tiles, 1
#       channel block -> 285 chunks of 2.
#     cuda NCHW: dw_forward grid (1026, 2), dw_backward_input grid (1026, 6); weight gradient: 4
#       channels x one 17 x 33 tile per image, grid (7, 38): 38 parts, one per sample.
#     cuda NHWC: dw_forward grid (76, 15), dw_backward_input grid (38, 45) (float32, two samples per
#       block) or (20, 45) (16-bit types, four); weight gradient (7, 38).
DW_CASES = [((24, 132, 17, 33), 5, 1, "same"), ((38, 27, 33, 65), 3, 2, 1)]

# power_iteration weights (viewed as (out, rest)), one call:
#   (257, 3, 19, 18) -> 257 x 1026 and (300, 880): more than 2**18 elements: triton's item path (9 x 9
#     and 10 x 7 row x column items of 32 x 128); cuda 5 x 5 and 5 x 4 tiles of 64 x 256.
#   (70, 3, 10, 9) -> 70 x 270: triton's persistent program loops over 3 x 3 tiles; cuda 2 x 2 tiles.
#   (6, 5): triton's resident program (one tile); cuda one tile.
# (The Triton interpreter's 64 x 256 items take the same three paths.)
PI_SHAPES = [(257, 3, 19, 18), (70, 3, 10, 9), (300, 880), (6, 5)]


def shape_id(shape) -> str:
    return "x".join(map(str, shape))


def backend_params(dtypes, layouts=LAYOUTS, cpu_triton: bool = False):
    """``pytest.param(backend, dtype, kind)`` for the GPU-plan shapes: on a GPU, triton and cuda in every
    dtype and layout; without one, cuda (the emulation) in float32, NCHW and channels_last, and triton
    (the interpreter) likewise when ``cpu_triton``, else one skipped entry that says why."""
    if ON_GPU:
        return [pytest.param(b, d, k, id=f"{b}-{str(d)[6:]}-{k}")
                for b in ("triton", "cuda") for d in dtypes for k in layouts]
    kinds = [k for k in ("contiguous", "channels_last") if k in layouts]
    params = [pytest.param("cuda", torch.float32, k, id=f"cuda-float32-{k}") for k in kinds]
    if cpu_triton:
        return params + [pytest.param("triton", torch.float32, k, id=f"triton-float32-{k}") for k in kinds]
    skip = pytest.mark.skip(reason="triton on the GPU-plan shapes needs a GPU (the interpreter is slow on them "
                                   "and plans for 2 SMs); tests/ops/test_gpu_plans.py asserts their plans anywhere")
    return params + [pytest.param("triton", torch.float32, kinds[0], id="triton", marks=skip)]

