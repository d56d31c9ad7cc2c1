"""SpaRED preprocessing, vectorised: filters, TPM, log2, adaptive median, Moran's I genes,
ComBat, Δ, masks and 224-px patches.

Each step is a function on an AnnData that names its layers; :func:`preprocess` runs them all.
Spot geometry (slides, spacing, nearest spots, rings, k-hop sets) lives in :mod:`.geometry`:
every module of the library takes its neighbours from there.
Introduced in ``notebooks/02_preprocessing.py``. Heavy libraries (scanpy, squidpy, torch) are
imported inside the functions that need them.
"""
from .combat import combat, combat_array
from .comparison import comparison_tables
from .config import PreprocessConfig, resolve_config
from .deltas import add_mask, deltas, deltas_array
from .filters import expression_fractions, filter_spots_and_genes, real_data_prefix, select_spots_and_genes
from .median import adaptive_median, adaptive_median_array, nonzero_medians
from .moran import moran_array, moran_genes, morans_i, top_genes
from .geometry import (DEFAULT_RADIUS, first_ring, index_from_adjacency, khop_adjacencies, khop_index,
                       nearest_in_slide, slide_codes, slide_groups, spatial_neighbors, spot_graph,
                       spot_spacing, within_radius)
from .normalise import gene_lengths, log1p, log1p_array, tpm, tpm_array
from .patches import IMAGENET_MEAN, IMAGENET_STD, dihedral, extract_patches
from .pipeline import LAYERS, check_counts, dense_counts, preprocess

__all__ = [
    "DEFAULT_RADIUS", "IMAGENET_MEAN", "IMAGENET_STD", "LAYERS", "PreprocessConfig",
    "adaptive_median", "adaptive_median_array", "add_mask", "check_counts", "combat",
    "combat_array", "comparison_tables", "deltas", "deltas_array", "dense_counts", "dihedral", "expression_fractions",
    "extract_patches", "filter_spots_and_genes", "first_ring", "gene_lengths",
    "index_from_adjacency", "khop_adjacencies", "khop_index", "log1p", "log1p_array", "moran_array",
    "moran_genes", "morans_i", "nearest_in_slide", "nonzero_medians", "preprocess",
    "real_data_prefix", "resolve_config", "select_spots_and_genes", "slide_codes", "slide_groups",
    "spatial_neighbors", "spot_graph", "spot_spacing", "top_genes", "tpm", "tpm_array",
    "within_radius",
]
