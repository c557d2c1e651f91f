"""Data sources of nvae_fast.data: shapes and ranges, the batch order, and a clear error for bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from nvae_fast.data import DataError, EpochSampler, ImageSet, load_dataset, load_folder, load_npz


def _rand_uint8(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("split,n", [("train", 1500), ("test", 297)])
@pytest.mark.parametrize("size", [8, 16, 24])
def test_digits_shape_range_and_disjoint_splits(split, n, size):
    data = load_dataset("digits", split, image_size=size)
    assert (len(data), data.channels, data.size) == (n, 1, size)
    x = data.batch(torch.arange(len(data)))
    assert x.dtype == torch.float32 and x.shape == (n, 1, size, size)
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9 and x.std() > 0.1
    other = load_dataset("digits", "test" if split == "train" else "train", image_size=size)
    a = data.images.flatten(1).numpy()
    b = {row.tobytes() for row in other.images.flatten(1).numpy()}
    assert sum(row.tobytes() in b for row in a) < 5  # the few exact duplicate digits at most


@pytest.mark.parametrize("layout,channels", [("nhw", 1), ("nhwc", 1), ("nhwc", 3), ("nchw", 1), ("nchw", 3)])
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
def test_npz_layouts_and_dtypes(tmp_path, layout, channels, dtype):
    raw = _rand_uint8((5, 12, 12, channels), seed=channels)
    arr = {"nhw": raw[..., 0], "nhwc": raw, "nchw": raw.transpose(0, 3, 1, 2)}[layout]
    arr = arr if dtype == "uint8" else arr.astype(dtype) / 255
    np.savez(tmp_path / "d.npz", images=arr)
    data = load_npz(tmp_path / "d.npz")
    assert (len(data), data.channels, data.size) == (5, channels, 12)
    expect = torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(data.batch(torch.arange(5)), expect, atol=0.5 / 255, rtol=0)


def test_npz_key_choice_and_resize(tmp_path):
    np.savez(tmp_path / "d.npz", a=_rand_uint8((3, 10, 10), 1), b=_rand_uint8((7, 20, 20, 3), 2))
    data = load_npz(tmp_path / "d.npz", key="b", image_size=8)
    assert (len(data), data.channels, data.size) == (7, 3, 8)
    with pytest.raises(DataError, match="choose one"):
        load_npz(tmp_path / "d.npz")
    with pytest.raises(DataError, match="npz key 'c'"):
        load_npz(tmp_path / "d.npz", key="c")


@pytest.mark.parametrize(
    "arr,match",
    [
        (np.zeros((0, 8, 8), np.uint8), "no images"),
        (np.full((2, 8, 6), 3, np.uint8), "square"),
        (np.ones((2, 8, 8, 5), np.uint8), "expected shape"),
        (np.ones((8, 8), np.uint8), "expected shape"),
        (np.linspace(-0.5, 1, 2 * 64).reshape(2, 8, 8), r"\[0, 1\]"),
        (np.linspace(0, 2, 2 * 64).reshape(2, 8, 8).astype(np.float32), r"\[0, 1\]"),
        (np.arange(2 * 64, dtype=np.int32).reshape(2, 8, 8) * 3, r"\[0, 255\]"),
        (np.full((2, 8, 8), np.nan, np.float32), "NaN"),
        (np.ones((2, 8, 8), np.complex64), "dtype"),
    ],
)
def test_npz_bad_content_names_the_file(tmp_path, arr, match):
    path = tmp_path / "bad.npz"
    np.savez(path, x=arr)
    with pytest.raises(DataError, match=match) as info:
        load_dataset(str(path))
    assert "bad.npz" in str(info.value)


def test_npz_unreadable_and_missing(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(DataError, match="corrupt.npz"):
        load_npz(path)
    with pytest.raises(DataError, match="nothing.npz"):
        load_dataset(str(tmp_path / "nothing.npz"))


def _write_images(folder, n, size, mode, seed):
    folder.mkdir(parents=True, exist_ok=True)
    ch = 1 if mode == "L" else 3
    for i in range(n):
        arr = _rand_uint8((size[1], size[0], ch), seed + i)
        Image.fromarray(arr[..., 0] if ch == 1 else arr, mode).save(folder / f"img{i:02d}.png")


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_folder_of_images(tmp_path, mode, channels):
    _write_images(tmp_path / "imgs" / "sub", 4, (13, 13), mode, seed=3)
    data = load_dataset(str(tmp_path / "imgs"))
    assert (len(data), data.channels, data.size) == (4, channels, 13)
    with Image.open(tmp_path / "imgs" / "sub" / "img00.png") as img:
        first = torch.from_numpy(np.array(img.convert(mode))).reshape(13, 13, channels).permute(2, 0, 1)
    assert torch.equal(data.images[0], first)


def test_folder_crops_non_square_and_mixes_to_rgb(tmp_path):
    _write_images(tmp_path / "f", 2, (15, 9), "RGB", seed=5)
    _write_images(tmp_path / "f" / "gray", 1, (9, 9), "L", seed=9)
    data = load_folder(tmp_path / "f", image_size=6)
    assert (len(data), data.channels, data.size) == (3, 3, 6)


def test_folder_errors_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty.*contains no image files"):
        load_dataset(str(tmp_path / "empty"))
    _write_images(tmp_path / "broken", 2, (8, 8), "L", seed=1)
    (tmp_path / "broken" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="zz.png"):
        load_dataset(str(tmp_path / "broken"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(source="no_such_dataset"), "no_such_dataset"),
        (dict(source="digits", split="valid"), "split"),
        (dict(source="digits", image_size=0), "image_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        load_dataset(**kwargs)


def test_existing_file_that_is_not_a_dataset(tmp_path):
    (tmp_path / "x.csv").write_text("1,2,3")
    with pytest.raises(DataError, match="x.csv.*neither a folder nor a .npz"):
        load_dataset(str(tmp_path / "x.csv"))


@pytest.mark.parametrize("name", ["mnist", "cifar10", "celeba64"])
def test_torchvision_datasets_need_torchvision(name, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(DataError, match=f"{name}.*torchvision"):
        load_dataset(name)


def test_imageset_rejects_bad_tensors():
    with pytest.raises(DataError, match="uint8"):
        ImageSet(torch.rand(2, 1, 4, 4), "floats")
    with pytest.raises(DataError, match="no images"):
        ImageSet(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), "empty")


@pytest.mark.parametrize("n,batch,world", [(37, 4, 1), (37, 2, 2), (50, 3, 3)])
def test_sampler_ranks_partition_the_joint_batch(n, batch, world):
    joint = EpochSampler(n, batch * world, seed=11)
    ranks = [EpochSampler(n, batch, seed=11, rank=r, world_size=world) for r in range(world)]
    assert joint.steps_per_epoch == ranks[0].steps_per_epoch == n // (batch * world)
    seen = []
    for step in range(2 * joint.steps_per_epoch + 1):
        parts = torch.cat([s.indices(step) for s in ranks])
        assert torch.equal(parts, joint.indices(step))
        if step < joint.steps_per_epoch:
            seen.append(parts)
    seen = torch.cat(seen)
    assert len(set(seen.tolist())) == len(seen)  # no repeats within an epoch
    e0 = torch.cat([joint.indices(t) for t in range(joint.steps_per_epoch)])
    e1 = torch.cat([joint.indices(t) for t in range(joint.steps_per_epoch, 2 * joint.steps_per_epoch)])
    assert not torch.equal(e0, e1)  # a fresh permutation each epoch
    fresh = EpochSampler(n, batch * world, seed=11)
    assert torch.equal(fresh.indices(joint.steps_per_epoch + 1), joint.indices(joint.steps_per_epoch + 1))


def test_sampler_errors():
    with pytest.raises(DataError, match="exceeds the dataset size 5"):
        EpochSampler(5, 3, seed=0, world_size=2)
    with pytest.raises(DataError, match="rank 2"):
        EpochSampler(10, 1, seed=0, rank=2, world_size=2)
