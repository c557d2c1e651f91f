"""Image grids and PNG files of nvae_fast.train.sampling."""

import numpy as np
import pytest
import torch
from PIL import Image

from nvae_fast.train.sampling import make_grid, save_png


@pytest.mark.parametrize("n,c,h,w,nrow", [(1, 1, 5, 5, None), (7, 3, 4, 6, 3), (10, 1, 3, 3, None), (5, 3, 2, 2, 5)])
def test_grid_layout(n, c, h, w, nrow):
    images = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(n))
    grid = make_grid(images, nrow)
    cols = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    assert grid.dtype == np.uint8 and grid.shape == (rows * (h + 1) + 1, cols * (w + 1) + 1, c)
    for i in range(n):
        r, col = divmod(i, cols)
        tile = grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w]
        expect = np.round(images[i].permute(1, 2, 0).numpy() * 255)
        assert np.abs(tile.astype(float) - expect).max() <= 0.5 + 1e-4
    assert (grid[0] == 255).all()  # padding is white


def test_grid_rejects_bad_shape():
    with pytest.raises(ValueError, match="images must be"):
        make_grid(torch.rand(2, 2, 4, 4))


@pytest.mark.parametrize("c,mode", [(1, "L"), (3, "RGB")])
def test_save_png(tmp_path, c, mode):
    images = torch.rand(6, c, 5, 5, generator=torch.Generator().manual_seed(c))
    path = save_png(images, tmp_path / "a" / "g.png", nrow=2, upscale=3)
    with Image.open(path) as img:
        assert img.mode == mode and img.size == (3 * (2 * 6 + 1), 3 * (3 * 6 + 1))
        arr = np.array(img).reshape(img.size[1], img.size[0], c)
    assert np.array_equal(arr[::3, ::3], make_grid(images, 2))
