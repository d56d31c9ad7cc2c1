"""Tests of spot patches (crop, border mirroring, 16-bit scaling, memmap) and the dihedral TTA helper."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from spared_lib import preprocessing as pp


def image_adata(img, centres, diameter, path=None, hires=None):
    obs = pd.DataFrame({"slide_id": pd.Categorical(["s"] * len(centres))},
                       index=[f"p{i}" for i in range(len(centres))])
    info = {"scalefactors": {"spot_diameter_fullres": diameter, "tissue_hires_scalef": 0.5},
            "fullres_path": str(path) if path else None, "images": {}}
    if hires is not None:
        info["images"]["hires"] = hires
    return ad.AnnData(obs=obs, obsm={"spatial": np.asarray(centres, float)}, uns={"spatial": {"s": info}})


def test_patch_is_the_spot_window(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "he.png")
    centres = [(100.0, 150.0), (5.0, 7.0), (398.0, 290.0)]  # x, y; the last two leave the image
    a = image_adata(img, centres, diameter=32, path=tmp_path / "he.png")
    patches = pp.extract_patches(a, size=32)  # same size: no resampling, exact pixels
    assert patches.shape == (3, 32, 32, 3) and patches.dtype == np.uint8
    np.testing.assert_array_equal(patches[0], img[134:166, 84:116])
    # border: mirrored ('symmetric') padding, the way np.pad does it
    padded = np.pad(img, ((40, 40), (40, 40), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(patches[1], padded[40 - 9:40 - 9 + 32, 40 - 11:40 - 11 + 32])
    np.testing.assert_array_equal(patches[2], padded[40 + 274:40 + 306, 40 + 382:40 + 414])
    big = pp.extract_patches(a, size=224, path=tmp_path / "p.npy")
    assert isinstance(big, np.memmap) and big.shape == (3, 224, 224, 3)
    back = np.load(tmp_path / "p.npy", mmap_mode="r")
    np.testing.assert_array_equal(back, big)
    # resizing keeps the mean colour of the window
    assert np.abs(big[0].reshape(-1, 3).mean(0) - patches[0].reshape(-1, 3).mean(0)).max() < 2.0


def test_16bit_tiff_is_scaled(tmp_path):
    import tifffile

    img16 = np.zeros((64, 64, 3), np.uint16)
    img16[..., 0] = 65535
    img16[..., 1] = 32896  # 128 * 257
    tifffile.imwrite(tmp_path / "he.tif", img16)
    a = image_adata(None, [(32.0, 32.0)], diameter=16, path=tmp_path / "he.tif")
    p = pp.extract_patches(a, size=16)
    assert (p[..., 0] == 255).all() and (p[..., 1] == 128).all() and (p[..., 2] == 0).all()


def test_hires_fallback_and_missing_image():
    hires = np.full((50, 50, 3), 0.5, np.float32)  # scanpy stores hires as float in [0, 1]
    a = image_adata(None, [(40.0, 40.0)], diameter=20, hires=hires)
    with pytest.warns(UserWarning, match="no full-resolution image"):
        p = pp.extract_patches(a, size=8)
    assert (p == 128).all()
    with pytest.raises(FileNotFoundError, match="fullres_path"):
        pp.extract_patches(a, source="fullres")
    a.uns["spatial"]["s"]["fullres_path"] = "/nonexistent/he.tif"
    with pytest.raises(FileNotFoundError, match="/nonexistent/he.tif"):
        pp.extract_patches(a)


def test_her2st_patches(fixtures):
    from spared_lib.data import fixture_dataset, load_dataset

    a = load_dataset(fixture_dataset("her2st"))
    a = a[a.obs["slide_id"] == "C2"][:12].copy()
    p = pp.extract_patches(a, source="fullres")
    assert p.shape == (12, 224, 224, 3)
    assert p.reshape(12, -1).std(1).min() > 5  # real tissue texture, not a constant fill


def test_dihedral_group():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    d = pp.dihedral(x)
    assert d.shape == (8, 2, 3, 4, 4)
    assert torch.equal(d[0], x)
    flat = {tuple(v.flatten().tolist()) for v in d}
    assert len(flat) == 8  # all distinct
    for v in d:  # each is a pixel permutation of x within each channel
        assert torch.equal(v.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)
    # closed under the group: applying the 8 symmetries to any element gives the same set
    assert {tuple(v.flatten().tolist()) for v in pp.dihedral(d[5])} == flat
    np.testing.assert_array_equal(pp.dihedral(x.numpy()), d.numpy())
    with pytest.raises(ValueError, match="B, C, H, W"):
        pp.dihedral(x[0])
