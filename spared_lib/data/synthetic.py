"""A synthetic Visium dataset, written in Space Ranger 2.x layout, for offline runs and tests.

The generator follows what the readers and models meet in SpaRED's real data:

* **geometry** — the Visium capture area (78 x 128 array, hex grid, 100 µm pitch, 55 µm spots),
  a tissue mask of irregular shape, a small rotation of the array in the image;
* **biology** — spatial domains (argmax of smooth random fields) and gene programs (smooth fields
  with 200–800 µm length scales), so expression is spatially autocorrelated;
* **counts** — negative binomial (gamma–Poisson) with gene-wise dispersion and log-normal gene
  means, giving 70–95 % zeros like SpaRED's raw data, plus a library-size factor per spot;
* **batch** — slide-specific gene offsets and library sizes, and a slide-specific stain colour;
* **histology** — an H&E-like full-resolution image made with the Beer–Lambert stain model:
  nuclei (hematoxylin) whose density follows program 0 and size follows the domain, eosin whose
  intensity follows program 1 and the domain, fibrous stroma texture, white lumina in one domain.
  Genes loading on those programs and domains are therefore predictable from a spot's patch.

Ground truth (domain and programs per spot) is written beside each slide in
``synthetic_truth.csv.gz``. Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .genes import gene_table
from .registry import DatasetInfo

ARRAY_ROWS, ARRAY_COLS = 78, 128
PITCH_UM = 100.0
SPOT_UM = 55.0
# Space Ranger's spot_diameter_fullres is the size of a 65 µm circle (10x documentation), slightly
# larger than the 55 µm capture spot; we write the same convention.
SPACERANGER_SPOT_UM = 65.0
# Ruifrok & Johnston optical-density vectors of hematoxylin and eosin (RGB).
H_VEC = np.array([0.65, 0.70, 0.29])
E_VEC = np.array([0.07, 0.99, 0.11])


def visium_array() -> tuple[np.ndarray, np.ndarray]:
    """All 4,992 Visium array positions (row, col) and their centres in µm (x, y).

    Rows are 100·√3/2 µm apart; within a row, neighbouring spots are 2 array columns (100 µm)
    apart and rows are offset by one column.

    Defined in ``notebooks/01_spared_database.py``.
    """
    rows, cols = np.meshgrid(np.arange(ARRAY_ROWS), np.arange(ARRAY_COLS), indexing="ij")
    keep = (rows + cols) % 2 == 0
    rc = np.c_[rows[keep], cols[keep]]
    xy = np.c_[rc[:, 1] * PITCH_UM / 2, rc[:, 0] * PITCH_UM * np.sqrt(3) / 2]
    return rc, xy


class _Field:
    """A smooth random field (random Fourier features) evaluable at points or on a pixel grid."""

    def __init__(self, rng: np.random.Generator, length_um: float, n_comp: int = 24):
        self.w = rng.normal(0, 1 / length_um, (n_comp, 2))
        self.phase = rng.uniform(0, 2 * np.pi, n_comp)
        self.amp = rng.normal(0, np.sqrt(2 / n_comp), n_comp)

    def at(self, xy_um: np.ndarray) -> np.ndarray:
        return np.cos(xy_um @ self.w.T + self.phase) @ self.amp

    def grid(self, px_x: np.ndarray, px_y: np.ndarray, to_um: np.ndarray, t_um: np.ndarray):
        """Values on the grid px_x (W,) x px_y (H,), with µm = to_um @ px + t_um (separable)."""
        w_px = self.w @ to_um  # frequency per pixel along x and y
        shift = self.w @ t_um + self.phase
        ax = np.outer(px_x, w_px[:, 0]) + shift  # (W, J)
        by = np.outer(px_y, w_px[:, 1])  # (H, J)
        cos_a, sin_a = np.cos(ax) * self.amp, np.sin(ax) * self.amp
        return (np.cos(by) @ cos_a.T - np.sin(by) @ sin_a.T).astype(np.float32)  # (H, W)


def _tissue_radius(xy_um, centre, harmonics):
    """Normalised radial distance to an irregular (harmonic-perturbed) tissue outline."""
    d = xy_um - centre
    angle = np.arctan2(d[..., 1], d[..., 0])
    k = np.arange(2, 2 + len(harmonics))[:, None]
    wobble = 1 + (harmonics[:, :1] * np.cos(k * angle.reshape(1, -1) + harmonics[:, 1:])).sum(0)
    return np.hypot(d[..., 0], d[..., 1]).reshape(-1) / wobble


def _barcodes(rng: np.random.Generator, n: int) -> np.ndarray:
    letters = np.array(list("ACGT"))
    while True:
        codes = np.array(["".join(r) for r in letters[rng.integers(0, 4, (n, 16))]], dtype=object)
        if len(np.unique(codes)) == n:
            return codes + "-1"


def _write_slide(folder: Path, slide: dict, genes: pd.DataFrame) -> None:
    import scipy.io
    import tifffile
    from PIL import Image

    (folder / "spatial").mkdir(parents=True)
    mtx_dir = folder / "filtered_feature_bc_matrix"
    mtx_dir.mkdir()
    with gzip.open(mtx_dir / "matrix.mtx.gz", "wb", compresslevel=1) as f:
        scipy.io.mmwrite(f, slide["counts"].T.tocoo(), field="integer")
    features = pd.DataFrame({"id": genes.index, "name": genes["gene_symbol"].to_numpy(),
                             "type": "Gene Expression"})
    features.to_csv(mtx_dir / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(slide["barcodes_in"]).to_csv(mtx_dir / "barcodes.tsv.gz", header=False, index=False)
    slide["positions"].to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(slide["scalefactors"]))
    image = slide["image"]
    for name in ("hires", "lowres"):
        scale = slide["scalefactors"][f"tissue_{name}_scalef"]
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        Image.fromarray(image).resize(size, Image.Resampling.BILINEAR).save(
            folder / "spatial" / f"tissue_{name}_image.png", compress_level=1)
    tifffile.imwrite(folder / f"{folder.name}_image.tif", image)
    slide["truth"].to_csv(folder / "synthetic_truth.csv.gz")


def _render_image(rng, fields, params, shape, to_um, t_um, radius_fn, um_per_px):
    """The H&E-like RGB image (uint8) of one slide.

    Smooth fields are evaluated on a 4x coarser grid and repeated (they vary over hundreds of µm,
    a block is 4 pixels); only the nuclei and the fibre texture are drawn at full resolution.
    """
    from scipy import ndimage

    H, W = shape
    step = 4
    gx, gy = np.arange(0, W, step) + step / 2, np.arange(0, H, step) + step / 2
    dom_maps = np.stack([f.grid(gx, gy, to_um, t_um) for f in fields["domains"]])
    domain = dom_maps.argmax(0).astype(np.int8)
    prog0 = fields["programs"][0].grid(gx, gy, to_um, t_um)
    prog1 = fields["programs"][1].grid(gx, gy, to_um, t_um)
    pts_um = (np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2) @ to_um.T) + t_um
    tissue = (radius_fn(pts_um) <= params["tissue_radius"]).reshape(domain.shape)

    def up(a, k=step):
        return np.repeat(np.repeat(a, k, 0), k, 1)[:H, :W]

    look = {k: np.asarray(v, np.float32) for k, v in params["look"].items()}
    # Nuclei: a Bernoulli point process whose density follows program 0 and the domain; one blur
    # draws them, and a per-domain threshold on the blur sets the apparent nucleus size.
    density = np.exp(0.6 * prog0) / (look["cell_um"][domain] / um_per_px) ** 2
    points = (rng.random((H, W), dtype=np.float32) < up(density)) & up(tissue)
    sigma = max(2.0 / um_per_px, 0.7)
    blob = ndimage.gaussian_filter(points.astype(np.float32), sigma) * np.float32(2 * np.pi * sigma**2)
    size = up(look["nucleus_size"][domain])  # 0 (small, dense chromatin) .. 1 (large, pale)
    hema = np.clip((blob - 0.35 * (1 - size)) / (0.65 + 0.35 * size), 0, 1) * (1.3 - 0.5 * size)
    hema += up(look["h_base"][domain])
    # Eosin: domain colour, modulated by program 1, with fibrous (anisotropic) stroma texture.
    half = ((H + 1) // 2, (W + 1) // 2)
    fibres = ndimage.gaussian_filter(rng.standard_normal(half, dtype=np.float32),
                                     (max(0.6, 0.75 / um_per_px), max(1.5, 6 / um_per_px)))
    fibres = up(fibres / (fibres.std() + 1e-8), 2)
    eosin = up(look["e_base"][domain] * np.exp(0.35 * prog1)) * (1 + up(look["fibre"][domain]) * 0.25 * fibres)
    # White lumina (glands, fat) in domains with look['lumen'] > 0.
    lumen = ndimage.gaussian_filter(rng.standard_normal(half, dtype=np.float32), max(1.0, 4 / um_per_px))
    lumen = up(lumen / (lumen.std() + 1e-8), 2) > up(2.2 - 2.0 * look["lumen"][domain])
    keep = up(tissue) & ~lumen
    hema = np.where(keep, hema, np.float32(0.02) * lumen)
    eosin = np.where(keep, np.clip(eosin, 0, None), np.float32(0.03) * lumen)
    od = (hema[..., None] * params["h_vec"].astype(np.float32)
          + eosin[..., None] * params["e_vec"].astype(np.float32) + np.float32(0.04))
    od += rng.standard_normal((H, W, 1), dtype=np.float32) * np.float32(0.015)
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= 255
    return np.clip(od, 0, 255, out=od).astype(np.uint8)


def make_synthetic_dataset(path: str | Path, n_slides: int = 3, n_spots: int = 2000,
                           n_genes: int = 1000, n_domains: int = 5, n_programs: int = 6,
                           organism: str = "human", um_per_px: float = 2.0,
                           n_prediction_genes: int = 32, seed: int = 0, key: str = "synthetic",
                           overwrite: bool = False) -> DatasetInfo:
    """Write a synthetic multi-slide Visium dataset (Space Ranger 2.x folders) and describe it.

    Parameters
    ----------
    path
        Folder to create; one sub-folder per slide plus ``dataset.json``.
    n_slides
        Number of slides (at least 2). With 3 slides: one each for train, val and test; with more,
        the last two are val and test.
    n_spots
        In-tissue spots per slide (at most 4,992, the Visium array).
    n_genes
        Genes measured (real Ensembl ids of protein-coding genes from the GENCODE table).
    n_domains, n_programs
        Spatial domains and gene programs.
    organism
        ``'human'`` or ``'mouse'`` (which gene table the ids come from).
    um_per_px
        Full-resolution pixel size; one spot diameter is ``65 / um_per_px`` pixels in
        ``scalefactors`` (the Space Ranger convention).
    n_prediction_genes
        The dataset's number of prediction genes (``n_genes`` in the registry sense, 32 or 128).
    seed
        Everything is deterministic given the seed.
    overwrite
        Replace an existing folder; otherwise an existing non-empty folder is an error.

    Returns
    -------
    DatasetInfo
        With ``root=path``; pass it (or the path) to :func:`spared_lib.data.load_dataset`.

    Defined in ``notebooks/01_spared_database.py``.
    """
    root = Path(path)
    rc_all, xy_all = visium_array()
    _check_arguments(root, n_slides, n_spots, len(rc_all), overwrite)
    rng = np.random.default_rng(seed)
    genes = _choose_genes(rng, organism, n_genes)
    biology = _gene_programs(rng, n_genes, n_domains, n_programs)
    slide_ids = [f"SYN{seed:02d}_{chr(ord('A') + i)}1" for i in range(n_slides)]
    barcodes_all = _barcodes(np.random.default_rng(12345), len(rc_all))  # fixed like a real chip

    root.mkdir(parents=True, exist_ok=True)
    for slide_id in slide_ids:
        srng = np.random.default_rng(rng.integers(2**63))
        fields = {"domains": [_Field(srng, 700.0) for _ in range(n_domains)],
                  "programs": [_Field(srng, length) for length in np.linspace(250.0, 800.0, n_programs)]}
        layout = _tissue_layout(srng, rc_all, xy_all, n_spots, um_per_px)
        counts, truth = _slide_counts(srng, fields, biology, xy_all[layout["in_tissue"]])
        params = {"look": biology["look"], "tissue_radius": layout["tissue_radius"],
                  "h_vec": H_VEC + srng.normal(0, 0.04, 3), "e_vec": E_VEC + srng.normal(0, 0.04, 3)}
        image = _render_image(srng, fields, params, layout["shape"], layout["to_um"], layout["t_um"],
                              layout["radius_fn"], um_per_px)
        truth.index = pd.Index(barcodes_all[layout["in_tissue"]], name="barcode")
        _write_slide(root / slide_id, {"counts": counts, "barcodes_in": barcodes_all[layout["in_tissue"]],
                                       "positions": _positions(barcodes_all, rc_all, layout),
                                       "scalefactors": _scalefactors(layout["shape"], um_per_px),
                                       "image": image, "truth": truth}, genes)
    return _describe(root, key, organism, n_prediction_genes, slide_ids, n_spots, seed)


def _check_arguments(root: Path, n_slides: int, n_spots: int, n_positions: int, overwrite: bool) -> None:
    if n_slides < 2:
        raise ValueError(f"n_slides must be at least 2 (train and val), got {n_slides}")
    if not 10 <= n_spots <= n_positions:
        raise ValueError(f"n_spots must be between 10 and {n_positions}, got {n_spots}")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} exists and is not empty (pass overwrite=True to replace it)")
        shutil.rmtree(root)


def _choose_genes(rng: np.random.Generator, organism: str, n_genes: int) -> pd.DataFrame:
    """Real protein-coding genes of the organism (ids and symbols), sorted by id."""
    table = gene_table(organism)
    coding = table.index[table["biotype"].to_numpy() == "protein_coding"]
    if n_genes > len(coding):
        raise ValueError(f"n_genes must be at most {len(coding)}, got {n_genes}")
    return table.loc[np.sort(rng.choice(coding, n_genes, replace=False)), ["gene_symbol"]]


def _gene_programs(rng: np.random.Generator, n_genes: int, n_domains: int, n_programs: int) -> dict:
    """The biology shared by all slides: gene means, dispersions, program loadings, domain
    effects, and each domain's look in the H&E. Slides differ only in layout and batch."""
    return {
        "base": rng.normal(-2.3, 1.7, n_genes),
        "theta": rng.gamma(4.0, 1.0, n_genes) + 0.5,
        "loads": rng.normal(0, 0.9, (n_genes, n_programs)) * (rng.random((n_genes, n_programs)) < 0.25),
        "dom_eff": rng.normal(0, 0.8, (n_domains, n_genes)) * (rng.random(n_genes) < 0.4),
        "look": {  # per-domain appearance
            "cell_um": rng.uniform(7, 16, n_domains), "nucleus_size": rng.uniform(0, 1, n_domains),
            "h_base": rng.uniform(0.05, 0.25, n_domains), "e_base": rng.uniform(0.25, 0.8, n_domains),
            "fibre": rng.uniform(0, 1.5, n_domains),
            "lumen": np.where(np.arange(n_domains) == n_domains - 1, 0.6, 0.0),
        },
    }


def _tissue_layout(srng: np.random.Generator, rc_all, xy_all, n_spots: int, um_per_px: float) -> dict:
    """Which array positions are tissue (the ``n_spots`` nearest an irregular outline's centre)
    and the array-to-pixel map (a small rotation, then a crop to the tissue plus a margin)."""
    centre = np.array([ARRAY_COLS * PITCH_UM / 4, ARRAY_ROWS * PITCH_UM * np.sqrt(3) / 4])
    centre = centre + srng.normal(0, 250, 2)
    harmonics = np.c_[srng.uniform(0, 0.15, 3), srng.uniform(0, 2 * np.pi, 3)]

    def radius_fn(xy, centre=centre, harmonics=harmonics):
        return _tissue_radius(xy, centre, harmonics)

    rad = radius_fn(xy_all)
    order = np.argsort(rad, kind="stable")
    in_tissue = np.zeros(len(rc_all), bool)
    in_tissue[order[:n_spots]] = True
    tissue_radius = (rad[order[n_spots - 1]] + rad[order[min(n_spots, len(rad) - 1)]]) / 2 + 30
    angle = np.deg2rad(srng.uniform(-2.5, 2.5))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    px_all = xy_all @ rot.T / um_per_px
    margin = 2 * PITCH_UM / um_per_px
    lo = px_all[in_tissue].min(0) - margin
    hi = px_all[in_tissue].max(0) + margin
    W, H = np.ceil(hi - lo).astype(int)
    return {"in_tissue": in_tissue, "tissue_radius": tissue_radius, "radius_fn": radius_fn,
            "px_all": px_all - lo, "shape": (H, W),
            "to_um": rot.T * um_per_px,  # pixel -> µm: µm = to_um @ px + t_um
            "t_um": rot.T @ lo * um_per_px}


def _slide_counts(srng: np.random.Generator, fields: dict, biology: dict, xy_in: np.ndarray):
    """Negative binomial counts of the tissue spots (gamma-Poisson with the slide's batch
    offsets and library sizes) and the ground truth (domain, programs) per spot."""
    domain = np.stack([f.at(xy_in) for f in fields["domains"]]).argmax(0)
    programs = np.stack([f.at(xy_in) for f in fields["programs"]], 1)
    batch_gene = srng.normal(0, 0.25, len(biology["base"]))
    lib = srng.normal(0, 0.35, len(xy_in)) + srng.normal(0, 0.3)
    log_mu = ((biology["base"] + batch_gene)[None] + programs @ biology["loads"].T
              + biology["dom_eff"][domain] + lib[:, None])
    theta = biology["theta"][None]
    lam = srng.gamma(theta, np.exp(log_mu) / theta)
    counts = sp.csr_matrix(srng.poisson(lam).astype(np.int32))
    truth = pd.DataFrame(programs, columns=[f"program_{p}" for p in range(programs.shape[1])])
    truth.insert(0, "domain", domain)
    return counts, truth


def _positions(barcodes_all, rc_all, layout) -> pd.DataFrame:
    """Space Ranger 2.x ``tissue_positions.csv`` rows for all 4,992 array positions."""
    px = layout["px_all"]
    return pd.DataFrame({"barcode": barcodes_all, "in_tissue": layout["in_tissue"].astype(int),
                         "array_row": rc_all[:, 0], "array_col": rc_all[:, 1],
                         "pxl_row_in_fullres": px[:, 1], "pxl_col_in_fullres": px[:, 0]})


def _scalefactors(shape, um_per_px: float) -> dict:
    H, W = shape
    return {"spot_diameter_fullres": SPACERANGER_SPOT_UM / um_per_px,
            "fiducial_diameter_fullres": 1.5 * SPACERANGER_SPOT_UM / um_per_px,
            "tissue_hires_scalef": min(1.0, 2000 / max(H, W)) * 0.5,
            "tissue_lowres_scalef": 600 / max(H, W), "microns_per_pixel": um_per_px}


def _describe(root: Path, key: str, organism: str, n_prediction_genes: int, slide_ids: list,
              n_spots: int, seed: int) -> DatasetInfo:
    """The dataset's description (one each for train, val and test with 3 slides; with more,
    the last two are val and test), written to ``dataset.json``."""
    n_train = max(1, len(slide_ids) - 2)
    info = DatasetInfo(
        key=key, organism=organism, n_genes=n_prediction_genes, combat_key="slide_id",
        cell_min_counts=10, train_slides=tuple(slide_ids[:n_train]),
        val_slides=tuple(slide_ids[n_train:n_train + 1]), test_slides=tuple(slide_ids[n_train + 1:]),
        abbreviation="SYN", tissue="synthetic", grid="hex", layout="visium",
        patients={s: f"SYN{seed:02d}" for s in slide_ids}, spots=n_spots * len(slide_ids),
        source=f"spared_lib.data.make_synthetic_dataset(seed={seed})", root=str(root.resolve()))
    info.to_json(root / "dataset.json")
    return info


def synthetic_truth(adata) -> pd.DataFrame:
    """The generator's ground truth (domain, programs) aligned with a loaded synthetic AnnData.

    Defined in ``notebooks/01_spared_database.py``.
    """
    frames = []
    for slide_id in adata.obs["slide_id"].cat.categories:
        folder = Path(adata.uns["spatial"][slide_id]["metadata"]["source"])
        truth = pd.read_csv(folder / "synthetic_truth.csv.gz", index_col="barcode")
        sel = adata.obs["slide_id"] == slide_id
        frames.append(truth.reindex(adata.obs.loc[sel, "barcode"].to_numpy())
                      .set_index(adata.obs_names[sel.to_numpy()]))
    return pd.concat(frames).loc[adata.obs_names]
