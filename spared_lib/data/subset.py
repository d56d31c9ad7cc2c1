"""Parts of a dataset: a contiguous crop of each slide, and the train/val/test split of a dataset
that has none (your own Visium data).

Introduced in ``notebooks/07_your_own_data.py``; ``notebooks/06_benchmark.py`` crops real slides
with :func:`crop_slides` in fast mode.
"""
from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def _check_spots(adata, where: str) -> None:
    missing = [f"obs['{c}']" for c in ("slide_id",) if c not in adata.obs]
    missing += ["obsm['spatial']"] if "spatial" not in adata.obsm else []
    if missing:
        raise KeyError(f"{where}: the AnnData has no {' and no '.join(missing)} (see DESIGN.md)")


def crop_slides(adata, max_spots: int, patches=None):
    """Keep, on each slide, the ``max_spots`` spots nearest the slide's centre (mean position).

    A contiguous crop (a disc, not a random subsample) keeps spatial neighbourhoods whole, which
    SpaCKLE and the context models (SEPAL, EGGN, Hist2ST, HisToGene) rely on. Fast modes use it to
    make real slides small.

    Parameters
    ----------
    adata
        AnnData with ``obs['slide_id']`` and ``obsm['spatial']``.
    max_spots
        Spots kept per slide (a slide with fewer keeps all of them).
    patches
        Optional array aligned with ``adata.obs``; cropped the same way.

    Returns
    -------
    AnnData (a copy, in the original order), or ``(AnnData, patches)`` when ``patches`` is given.

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    import pandas as pd

    if int(max_spots) != max_spots or max_spots < 1:
        raise ValueError(f"crop_slides: max_spots must be a whole number >= 1, got {max_spots!r}")
    _check_spots(adata, "crop_slides")
    if patches is not None and len(patches) != adata.n_obs:
        raise ValueError(f"crop_slides: patches has {len(patches)} rows; the AnnData has {adata.n_obs} spots")
    slide = np.asarray(adata.obs["slide_id"].astype(str))
    xy = pd.DataFrame(np.asarray(adata.obsm["spatial"], dtype=float), columns=["x", "y"])
    centre = xy.groupby(slide).transform("mean")
    dist = pd.Series(np.hypot(xy["x"] - centre["x"], xy["y"] - centre["y"]).to_numpy())
    rank = dist.groupby(slide).rank(method="first")
    keep = np.flatnonzero(rank.to_numpy() <= max_spots)
    out = adata[keep].copy()
    if patches is None:
        return out
    return out, np.asarray(patches[keep])


def assign_splits(adata, *, test_fraction: float = 0.15, val_fraction: float = 0.15, by: str = "auto"):
    """Write ``obs['split']`` (train / val / test) so that models are evaluated on spots they never saw.

    With three or more slides whole slides are held out, as SpaRED does: the last slide (in
    ``obs['slide_id']``'s category order) is the test set and the one before it validation. With
    one or two slides, bands of tissue are held out instead: on each slide the bottom
    ``test_fraction`` of the spots by image row is the test set and the ``val_fraction`` above it
    validation. A random spot split would leak, since neighbouring spots look alike.

    Parameters
    ----------
    adata
        AnnData with ``obs['slide_id']`` and ``obsm['spatial']`` (x = column, y = row).
    test_fraction, val_fraction
        Shares of each slide's spots in the held-out bands (``by='band'`` only).
    by
        ``'slide'``, ``'band'``, or ``'auto'`` (slides when there are at least three).

    Returns
    -------
    AnnData
        ``adata`` itself, with ``obs['split']`` categorical in the order train, val, test.
        Nothing is changed when the input is rejected.

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    import pandas as pd

    _check_spots(adata, "assign_splits")
    if by not in ("auto", "slide", "band"):
        raise ValueError(f"assign_splits: by must be 'auto', 'slide' or 'band', got {by!r}")
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError("assign_splits: test_fraction and val_fraction must be in (0, 1) and leave spots "
                         f"for training (got {test_fraction}, {val_fraction})")
    slide_col = adata.obs["slide_id"].astype("category")
    slides = [str(s) for s in slide_col.cat.categories if (slide_col == s).any()]
    if by == "auto":
        by = "slide" if len(slides) >= 3 else "band"
    if by == "slide":
        if len(slides) < 3:
            raise ValueError(f"assign_splits: holding out whole slides needs at least 3, the data has {len(slides)}")
        role = {s: "train" for s in slides} | {slides[-2]: "val", slides[-1]: "test"}
        split = slide_col.astype(str).map(role).to_numpy()
    else:
        y = pd.Series(np.asarray(adata.obsm["spatial"], dtype=float)[:, 1])
        rank = y.groupby(np.asarray(slide_col.astype(str))).rank(pct=True, method="first").to_numpy()
        split = np.select([rank > 1 - test_fraction, rank > 1 - test_fraction - val_fraction],
                          ["test", "val"], "train")
    empty = [s for s in SPLITS if not (split == s).any()]
    if empty:
        raise ValueError(f"assign_splits: the {' and '.join(empty)} split would be empty "
                         f"({adata.n_obs} spots on {len(slides)} slide(s)); use larger fractions or more spots")
    adata.obs["split"] = pd.Categorical(split, categories=list(SPLITS))
    return adata
