"""Histology images: open (very large, trusted) files, read their size without decoding, decode
reduced copies. Errors name the file and say what is wrong with it.

Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .checks import DataFileError, reading

TIFF_SUFFIXES = (".tif", ".tiff", ".btf")


def open_image(path: str | Path):
    """Open a (possibly very large, trusted) histology image with PIL.

    Whole-slide H&E images exceed PIL's decompression-bomb limit (~89 Mpx); the images come from
    the dataset's own files, so the limit is lifted for this call only. A file PIL cannot identify
    (truncated, HTML, empty) raises :class:`~spared_lib.data.DataFileError` naming it.

    Defined in ``notebooks/01_spared_database.py``.
    """
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    with warnings.catch_warnings(), reading(path, "the image"):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image from its header, without decoding the pixels.

    TIFF/BigTIFF go through tifffile (PIL cannot open BigTIFF); the rest through PIL.

    Defined in ``notebooks/01_spared_database.py``.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        with reading(path, "the TIFF header"), tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return int(page.imagewidth), int(page.imagelength)
    with open_image(path) as img:
        return img.size


def read_rgb(path: str | Path) -> np.ndarray:
    """The whole image decoded as an ``(H, W, 3)`` uint8 array (a truncated file is an error)."""
    path = Path(path)
    with open_image(path) as img, reading(path, "the image's pixels"):
        return np.asarray(img.convert("RGB"))


def downscaled(path: str | Path, sizes: dict[str, int]) -> tuple[dict, dict, tuple[int, int]]:
    """Reduced RGB copies of a large image: ``{name: max_px}`` -> (images, scale factors, full size).

    JPEGs decode in draft mode at the first size (fast); each copy's scale factor
    ``tissue_<name>_scalef`` is its width over the full width, as Space Ranger defines it.
    """
    from PIL import Image

    path = Path(path)
    first = max(sizes.values())
    images, scales = {}, {}
    with open_image(path) as img, reading(path, "the image's pixels"):
        full_w, full_h = img.size
        img.draft("RGB", (first, first))
        base = img.convert("RGB")
    for name, max_px in sizes.items():
        scale = max_px / max(full_w, full_h)
        size = (max(1, round(full_w * scale)), max(1, round(full_h * scale)))
        images[name] = np.asarray(base.resize(size, Image.Resampling.LANCZOS))
        scales[f"tissue_{name}_scalef"] = size[0] / full_w
    return images, scales, (full_w, full_h)


def require_complete_tiff(path: Path) -> None:
    """Raise :class:`DataFileError` unless every strip/tile of every page of a TIFF lies inside
    the file (reads only the headers: cheap even for a 1 GB whole-slide image)."""
    import tifffile

    path = Path(path)
    size = path.stat().st_size
    with reading(path, "the TIFF"), tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            ends = np.asarray(page.dataoffsets, dtype=np.int64) + np.asarray(page.databytecounts, dtype=np.int64)
            if len(ends) and ends.max() > size:
                raise DataFileError(path, f"the TIFF is truncated: its image data reach byte "
                                          f"{ends.max()} of a {size}-byte file")


def require_decodes(path: Path, name: str | None = None) -> None:
    """Raise :class:`DataFileError` unless the image decodes completely (used on downloads;
    ``name``, default the file's, decides the format when the file is a temporary download).

    JPEGs are decoded in draft mode (1/8 size: every entropy-coded block is still read, so a
    truncated file fails); TIFFs must have every strip/tile inside the file (headers only, cheap
    for a whole-slide image); other formats decode completely.
    """
    path = Path(path)
    if Path(name or path.name).suffix.lower() in TIFF_SUFFIXES:
        require_complete_tiff(path)
        return
    with open_image(path) as img, reading(path, "the image's pixels"):
        if img.format == "JPEG":
            img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
        img.load()
