"""The parameters of the SpaRED protocol and how a dataset's own values are read.

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# SPEC §2: the fixed parameters of SpaRED's filter (same for all 26 datasets).
CELL_MAX_COUNTS = 1_000_000
GENE_MIN_COUNTS = 10
GENE_MAX_COUNTS = 1_000_000
REAL_DATA_PERCENTAGE = 0.7
N_HOPS = 4


@dataclass(frozen=True)
class PreprocessConfig:
    """What :func:`~spared_lib.preprocessing.preprocess` needs to know about a dataset.

    ``organism`` picks the gene table (TPM lengths, kept genes); ``n_genes`` is the number of
    prediction genes (32 or 128 in SpaRED); ``combat_key`` is the ``obs`` column of ComBat batches
    (``None`` skips ComBat and copies the layers); ``grid`` is ``'hex'`` (Visium) or ``'square'``
    (legacy ST). The other fields are SpaRED's fixed filter values.

    Defined in ``notebooks/02_preprocessing.py``.
    """

    organism: str
    n_genes: int
    combat_key: str | None = "slide_id"
    cell_min_counts: int = 10
    grid: str = "hex"
    cell_max_counts: int = CELL_MAX_COUNTS
    gene_min_counts: int = GENE_MIN_COUNTS
    gene_max_counts: int = GENE_MAX_COUNTS
    real_data_percentage: float = REAL_DATA_PERCENTAGE
    n_hops: int = N_HOPS

    def __post_init__(self):
        if self.organism not in ("human", "mouse"):
            raise ValueError(f"organism must be 'human' or 'mouse', got {self.organism!r}")
        if self.grid not in ("hex", "square"):
            raise ValueError(f"grid must be 'hex' or 'square', got {self.grid!r}")
        if int(self.n_genes) <= 0:
            raise ValueError(f"n_genes must be positive, got {self.n_genes!r}")
        if not 0 < self.real_data_percentage <= 1:
            raise ValueError(f"real_data_percentage must be in (0, 1], got {self.real_data_percentage!r}")
        if self.n_hops < 1:
            raise ValueError(f"n_hops must be at least 1, got {self.n_hops!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_config(dataset=None, adata=None, **overrides) -> PreprocessConfig:
    """A :class:`PreprocessConfig` from a registry ``DatasetInfo``, a dict, a config, or
    ``adata.uns['dataset']`` when ``dataset`` is None; keyword ``overrides`` win.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    names = {f.name for f in fields(PreprocessConfig)}
    if dataset is None:
        if adata is None or "dataset" not in adata.uns:
            raise ValueError("no dataset description: pass `dataset` (a DatasetInfo, a dict or a "
                             "PreprocessConfig) or give adata.uns['dataset']")
        source = dict(adata.uns["dataset"])
    elif isinstance(dataset, PreprocessConfig):
        source = dataset.to_dict()
    elif isinstance(dataset, dict):
        source = dict(dataset)
    elif hasattr(dataset, "organism") and hasattr(dataset, "n_genes"):
        source = {n: getattr(dataset, n) for n in names if hasattr(dataset, n)}
    else:
        raise TypeError(f"dataset must be a DatasetInfo, a dict or a PreprocessConfig, got {type(dataset).__name__}")
    source.update(overrides)
    missing = {"organism", "n_genes"} - set(source)
    if missing:
        raise ValueError(f"dataset description lacks {sorted(missing)}")
    kw = {k: v for k, v in source.items() if k in names}
    if kw.get("combat_key") in ("None", ""):
        kw["combat_key"] = None
    kw["n_genes"] = int(kw["n_genes"])
    return PreprocessConfig(**kw)
