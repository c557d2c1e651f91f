"""Image data for training and evaluation.

Every source becomes an :class:`ImageSet`: ``N`` square images ``(C, S, S)`` with ``C`` in {1, 3},
held in memory as 8-bit values and returned as float32 in ``[0, 1]`` (``value / 255``). Sources:

``digits``
    scikit-learn's ``load_digits`` (1,797 real 8×8 handwritten digits shipped with scikit-learn, values
    0..16), scaled to ``[0, 1]`` and upsampled bilinearly to 16×16 (or ``image_size``). Split by a fixed
    permutation: 1,500 ``train`` and 297 ``test`` images.
``mnist``, ``cifar10``, ``celeba64``
    through torchvision (imported only here; a clear error if it is missing). MNIST is zero-padded from
    28 to 32 pixels; CelebA is center-cropped to 148×148 and resized to 64×64.
a folder
    every image file below it (Pillow), center-cropped to a square and resized to ``image_size``
    (default: the first image's size); grayscale when all files are, RGB otherwise.
a ``.npz`` file
    the array under ``npz_key`` (or the only array), shaped (N, S, S), (N, S, S, C) or (N, C, S, S);
    integer values in [0, 255] or float values in [0, 1].

Folders and ``.npz`` files have a single split: ``split`` is ignored for them.
Bad data raises :class:`DataError` naming the offending path or argument.

Batches come in a fixed order: :class:`EpochSampler` draws one permutation per epoch from
``(seed, epoch)``, so the order of any step is a pure function of ``(seed, step)`` (exact resume).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DATASETS",
    "DataError",
    "ImageSet",
    "EpochSampler",
    "load_dataset",
    "load_digits",
    "load_folder",
    "load_npz",
]

DATASETS = ("digits", "mnist", "cifar10", "celeba64")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_DIGITS_TEST = 297


class DataError(ValueError):
    """A data source that cannot be used; the message names the path or argument at fault."""


class ImageSet(torch.utils.data.Dataset):
    """In-memory images: ``images`` uint8 (N, C, S, S); items and batches are float32 in [0, 1]."""

    def __init__(self, images: torch.Tensor, name: str):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"{name}: expected uint8 images (N, C in {{1, 3}}, S, S), got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise DataError(f"{name}: contains no images")
        if images.shape[2] != images.shape[3]:
            raise DataError(f"{name}: images must be square, got {images.shape[2]}x{images.shape[3]}")
        self.images = images.contiguous()
        self.name = name

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        return self.images.shape[2]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index].float().div_(255)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Images at ``indices`` (B,) as float32 (B, C, S, S) in [0, 1], on the images' device."""
        return self.images[indices.to(self.images.device)].float().div_(255)

    def to(self, device) -> "ImageSet":
        """The same images held on ``device`` (batches are then gathered there)."""
        return ImageSet(self.images.to(device), self.name)

    def __repr__(self) -> str:
        return f"ImageSet({self.name!r}, n={len(self)}, channels={self.channels}, size={self.size})"


class EpochSampler:
    """Index batches for ``step = 0, 1, ...``: each epoch is a permutation of ``range(n)`` drawn from
    ``(seed, epoch)``; step ``t`` of an epoch takes the global batch ``perm[t*B*W : (t+1)*B*W]`` and rank
    ``r`` its slice ``[r*B, (r+1)*B)`` (``B`` = per-rank ``batch_size``, ``W`` = ``world_size``). The
    incomplete tail of an epoch is dropped, so one process with batch ``B*W`` sees the same global batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = n // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"batch_size {batch_size} x world_size {world_size} exceeds the dataset size {n}"
            )
        self._epoch, self._perm = None, None

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, batch index within the epoch)`` of ``step``."""
        return divmod(step, self.steps_per_epoch)

    def indices(self, step: int) -> torch.Tensor:
        """This rank's indices (batch_size,) int64 for global ``step``."""
        epoch, pos = self.position(step)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        start = (pos * self.world_size + self.rank) * self.batch_size
        return self._perm[start : start + self.batch_size]


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, s, s) -> uint8 (N, C, size, size), bilinear (antialiased when shrinking)."""
    if images.shape[-1] == size:
        return images
    x = images.float().div_(255)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return _to_uint8(x)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")


def load_digits(split: str = "train", image_size: int | None = 16) -> ImageSet:
    """scikit-learn's 8×8 digits scaled to [0, 1] and upsampled to ``image_size`` (default 16)."""
    _check_split(split)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:
        raise DataError("dataset 'digits' needs scikit-learn: pip install scikit-learn") from exc
    images = torch.from_numpy(sk_load_digits().images).float().div_(16).unsqueeze(1)
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    keep = perm[-_DIGITS_TEST:] if split == "test" else perm[:-_DIGITS_TEST]
    x = images[keep]
    size = image_size or 16
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < 8)
    return ImageSet(_to_uint8(x), f"digits/{split}")


def _torchvision(name: str):
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DataError(
            f"dataset {name!r} needs torchvision (pip install torchvision); or pass a folder of images or a .npz file"
        ) from exc
    return tvd


def _open_torchvision(name: str, factory, root: str, download: bool):
    try:
        return factory()
    except RuntimeError as exc:
        hint = "" if download else " (add --download to fetch it)"
        raise DataError(f"dataset {name!r} not found under data root {root!r}{hint}: {exc}") from exc


def _load_mnist(split, root, download, image_size):
    tvd = _torchvision("mnist")
    ds = _open_torchvision("mnist", lambda: tvd.MNIST(root, train=split == "train", download=download), root, download)
    x = torch.as_tensor(ds.data).unsqueeze(1)
    if (image_size or 32) == 32:
        return ImageSet(F.pad(x, (2, 2, 2, 2)), f"mnist/{split}")
    return ImageSet(_resize(x, image_size), f"mnist/{split}")


def _load_cifar10(split, root, download, image_size):
    tvd = _torchvision("cifar10")
    ds = _open_torchvision("cifar10", lambda: tvd.CIFAR10(root, train=split == "train", download=download), root, download)
    x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2)
    return ImageSet(_resize(x, image_size or 32), f"cifar10/{split}")


def _load_celeba64(split, root, download, image_size):
    from PIL import Image

    tvd = _torchvision("celeba64")
    ds = _open_torchvision("celeba64", lambda: tvd.CelebA(root, split=split, download=download), root, download)
    size = image_size or 64
    out = torch.empty(len(ds), 3, size, size, dtype=torch.uint8)
    for i in range(len(ds)):
        img = ds[i][0].convert("RGB")
        w, h = img.size
        left, top = (w - 148) // 2, (h - 148) // 2
        img = img.crop((left, top, left + 148, top + 148)).resize((size, size), Image.BICUBIC)
        out[i] = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    return ImageSet(out, f"celeba64/{split}")


def _square_crop(img):
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def load_folder(path: str | os.PathLike, image_size: int | None = None) -> ImageSet:
    """Every image file under ``path`` (recursively, sorted), square-cropped and resized."""
    from PIL import Image
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"folder {str(root)!r} contains no image files ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for f in files:
        try:
            with Image.open(f) as img:
                img.load()
                images.append(img.copy())
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read image {str(f)!r}: {exc}") from exc
    gray = all(img.mode in ("1", "L", "LA", "I", "I;16", "F") for img in images)
    mode = "L" if gray else "RGB"
    size = image_size or min(images[0].size)
    out = torch.empty(len(images), 1 if gray else 3, size, size, dtype=torch.uint8)
    for i, img in enumerate(images):
        if img.mode in ("I", "I;16", "F"):
            raise DataError(f"image {str(files[i])!r} has mode {img.mode!r}; use 8-bit grayscale or RGB images")
        img = _square_crop(img.convert(mode))
        if img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        arr = np.array(img, dtype=np.uint8)
        out[i] = torch.from_numpy(arr.reshape(size, size, -1)).permute(2, 0, 1)
    return ImageSet(out, str(root))


def _npz_array(path: Path, key: str | None) -> np.ndarray:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {str(path)!r} as a .npz archive: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{str(path)!r} is a .npy array, not a .npz archive")
    with archive:
        keys = list(archive.keys())
        if key is None:
            if len(keys) != 1:
                raise DataError(f"{str(path)!r} holds arrays {keys}: choose one with the npz key argument")
            key = keys[0]
        elif key not in keys:
            raise DataError(f"npz key {key!r} is not in {str(path)!r} (it holds {keys})")
        try:
            return archive[key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read array {key!r} of {str(path)!r}: {exc}") from exc


def _as_nchw(a: np.ndarray, where: str) -> np.ndarray:
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
            return a.transpose(0, 3, 1, 2)
        if a.shape[1] in (1, 3):
            return a
    raise DataError(
        f"{where}: expected shape (N, S, S), (N, S, S, C) or (N, C, S, S) with C in {{1, 3}}, got {a.shape}"
    )


def load_npz(path: str | os.PathLike, key: str | None = None, image_size: int | None = None) -> ImageSet:
    """Images from array ``key`` (or the only array) of the ``.npz`` file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file {str(path)!r} does not exist")
    a = _npz_array(path, key)
    where = f"{path}[{key}]" if key else str(path)
    a = _as_nchw(a, where)
    if a.shape[0] == 0:
        raise DataError(f"{where}: contains no images")
    if a.shape[2] != a.shape[3]:
        raise DataError(f"{where}: images must be square, got {a.shape[2]}x{a.shape[3]}")
    if a.dtype == np.bool_:
        x = torch.from_numpy(a.astype(np.uint8) * 255)
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: integer values must lie in [0, 255], found [{lo}, {hi}]")
        x = torch.from_numpy(a.astype(np.uint8))
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise DataError(f"{where}: contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            raise DataError(f"{where}: float values must lie in [0, 1], found [{lo:g}, {hi:g}]")
        x = _to_uint8(torch.from_numpy(a.astype(np.float32)))
    else:
        raise DataError(f"{where}: unsupported dtype {a.dtype}")
    return ImageSet(_resize(x, image_size or x.shape[-1]), where)


def load_dataset(
    source: str,
    split: str = "train",
    image_size: int | None = None,
    root: str = "data",
    npz_key: str | None = None,
    download: bool = False,
) -> ImageSet:
    """Load ``source``: a name in :data:`DATASETS`, a folder of images, or a ``.npz`` file.

    ``image_size`` resizes to that side length (default: the source's own); ``root`` is where
    torchvision keeps its datasets; ``download`` lets torchvision fetch them.
    """
    _check_split(split)
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be positive, got {image_size}")
    if source == "digits":
        return load_digits(split, image_size)
    if source == "mnist":
        return _load_mnist(split, root, download, image_size)
    if source == "cifar10":
        return _load_cifar10(split, root, download, image_size)
    if source == "celeba64":
        return _load_celeba64(split, root, download, image_size)
    path = Path(source)
    if path.is_dir():
        return load_folder(path, image_size)
    if path.suffix.lower() == ".npz":
        return load_npz(path, npz_key, image_size)
    if path.exists():
        raise DataError(f"dataset {source!r} is neither a folder nor a .npz file")
    raise DataError(f"dataset {source!r} is not one of {DATASETS}, an existing folder or a .npz file")
