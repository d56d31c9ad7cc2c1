"""224-px histology patches around each spot, kept outside the AnnData, and the 8 dihedral
symmetries for test-time averaging (SPEC §2 step 11).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .geometry import slide_groups

#: ImageNet's channel mean and standard deviation (RGB, on [0, 1]): what torchvision's pretrained
#: backbones were trained on; the trainer normalises every patch with them.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Spots cropped and resized at once: bounds the working memory to a few hundred MB.
_BATCH = 256


def to_uint8_rgb(img: np.ndarray, source: str = "image") -> np.ndarray:
    """An image as ``(H, W, 3)`` uint8: channels last, alpha dropped, grey stacked, 16-bit and
    float images scaled to 8 bits.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3:
        raise ValueError(f"{source}: expected a 2-D or 3-D image, got shape {img.shape}")
    if img.shape[0] in (1, 3, 4) and img.shape[2] not in (1, 3, 4):
        img = np.moveaxis(img, 0, -1)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        top = 1.0 if float(np.nanmax(img)) <= 1.0 else 255.0
        return np.clip(np.rint(img / top * 255), 0, 255).astype(np.uint8)
    raise ValueError(f"{source}: unsupported image dtype {img.dtype}")


def _read_fullres(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"full-resolution image {p} (uns['spatial'][slide]['fullres_path']) not found")
    if p.suffix.lower() in (".tif", ".tiff", ".btf"):
        import tifffile

        return to_uint8_rgb(tifffile.imread(p), str(p))
    from spared_lib.data import open_image

    with open_image(p) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            return to_uint8_rgb(np.asarray(im), str(p))
        return to_uint8_rgb(np.asarray(im.convert("RGB")), str(p))


def _slide_image(info: dict, slide: str, source: str) -> tuple[np.ndarray, float]:
    """The image of one slide and the factor from full-resolution pixels to its pixels."""
    path = info.get("fullres_path")
    if source in ("auto", "fullres") and path:
        return _read_fullres(path), 1.0
    if source == "fullres":
        raise FileNotFoundError(f"slide {slide!r} has no full-resolution image (uns['spatial'][{slide!r}]"
                                "['fullres_path'] is empty); use source='auto' to fall back to 'hires'")
    images = info.get("images", {})
    for name in ("hires", "lowres"):
        if name in images:
            if source == "auto":
                warnings.warn(f"slide {slide!r}: no full-resolution image, patches are cut from the "
                              f"{name} image and upsampled", stacklevel=3)
            return to_uint8_rgb(images[name], f"{slide} {name}"), float(info["scalefactors"][f"tissue_{name}_scalef"])
    raise FileNotFoundError(f"slide {slide!r} has no image to cut patches from")


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored at the border ('symmetric' padding: ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...)."""
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i < n, i, period - 1 - i)


def crop_windows(img: np.ndarray, centres_xy: np.ndarray, window: int) -> np.ndarray:
    """``(m, window, window, 3)`` square crops centred on ``centres_xy`` (x = column, y = row),
    mirrored where they leave the image.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    H, W = img.shape[:2]
    top = np.rint(centres_xy[:, 1] - window / 2).astype(np.int64)
    left = np.rint(centres_xy[:, 0] - window / 2).astype(np.int64)
    off = np.arange(window)
    rows = _reflect(top[:, None] + off, H)
    cols = _reflect(left[:, None] + off, W)
    return img[rows[:, :, None], cols[:, None, :]]


def _resize(batch: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def extract_patches(adata, size: int = 224, path: str | Path | None = None, source: str = "auto",
                    progress: bool = False) -> np.ndarray:
    """Patches of one spot diameter around each spot, resized to ``size`` x ``size`` RGB uint8.

    For each slide, the window is ``uns['spatial'][slide]['scalefactors']['spot_diameter_fullres']``
    pixels of the full-resolution image (``uns['spatial'][slide]['fullres_path']``), centred on
    ``obsm['spatial']``, mirrored at the border, resized with antialiased bilinear interpolation.
    ``source='auto'`` falls back to the hires image (with a warning) where a slide has no full-res
    image; ``'fullres'`` requires it. The result is aligned with ``adata.obs`` and never stored in
    the AnnData: an in-memory array, or an ``np.memmap`` (``.npy``) written at ``path``.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    from tqdm.auto import tqdm

    if source not in ("auto", "fullres", "hires"):
        raise ValueError(f"source must be 'auto', 'fullres' or 'hires', got {source!r}")
    if "spatial" not in adata.obsm:
        raise KeyError("extract_patches: adata.obsm['spatial'] is missing")
    shape = (adata.n_obs, size, size, 3)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    else:
        out = np.empty(shape, dtype=np.uint8)
    spatial = adata.uns.get("spatial", {})
    bar = tqdm(total=adata.n_obs, desc="patches", disable=not progress)
    for slide, idx in slide_groups(adata):
        if slide not in spatial:
            raise KeyError(f"extract_patches: adata.uns['spatial'] has no entry for slide {slide!r}")
        info = spatial[slide]
        img, scale = _slide_image(info, slide, source)
        diameter = float(info["scalefactors"]["spot_diameter_fullres"]) * scale
        window = max(2, int(round(diameter)))
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[idx] * scale
        for s in range(0, idx.size, _BATCH):
            out[idx[s:s + _BATCH]] = _resize(crop_windows(img, xy[s:s + _BATCH], window), size)
            bar.update(min(_BATCH, idx.size - s))
        del img
    bar.close()
    if isinstance(out, np.memmap):
        out.flush()
    return out


def dihedral(x):
    """The 8 symmetries (4 rotations x optional flip) of a ``(B, C, H, W)`` batch, stacked as
    ``(8, B, C, H, W)``; a torch tensor or NumPy array. Average a model's outputs over the first
    axis for test-time augmentation.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"dihedral expects a (B, C, H, W) batch, got shape {getattr(x, 'shape', None)}")
    if isinstance(x, np.ndarray):
        flipped = x[..., ::-1]
        return np.stack([np.rot90(v, k, axes=(2, 3)) for v in (x, flipped) for k in range(4)])
    import torch

    flipped = torch.flip(x, dims=(3,))
    return torch.stack([torch.rot90(v, k, dims=(2, 3)) for v in (x, flipped) for k in range(4)])
