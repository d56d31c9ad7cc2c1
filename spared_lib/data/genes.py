"""GENCODE gene tables (Ensembl id, symbol, biotype, union-of-exons length).

The tables in ``spared_lib/resources`` are built by ``scripts/build_gene_table.py`` from the
GENCODE v43 basic (human) and vM33 basic (mouse) GTFs. Introduced in
``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

GENE_TABLES = {
    "human": "genes_human_gencode_v43.tsv.gz",
    "mouse": "genes_mouse_gencode_vM33.tsv.gz",
}


@lru_cache(maxsize=None)
def _load(organism: str) -> pd.DataFrame:
    source = resources.files("spared_lib.resources") / GENE_TABLES[organism]
    with resources.as_file(source) as path:
        table = pd.read_csv(path, sep="\t", index_col="gene_id",
                            dtype={"gene_symbol": str, "biotype": str, "length": np.int64})
    return table


def gene_table(organism: str) -> pd.DataFrame:
    """The gene table of ``organism`` (``'human'`` or ``'mouse'``), indexed by ``gene_id``.

    Columns ``gene_symbol``, ``biotype`` and ``length`` (bp, union of all exons). The table is read
    once and cached; a copy is returned so callers may modify it.

    Defined in ``notebooks/01_spared_database.py``.
    """
    if organism not in GENE_TABLES:
        raise ValueError(f"organism must be one of {sorted(GENE_TABLES)}, got {organism!r}")
    return _load(organism).copy()


def symbols_to_ids(symbols, organism: str) -> np.ndarray:
    """Map gene symbols to Ensembl ids (object array, ``None`` where a symbol is unknown).

    A symbol shared by several GENCODE genes maps to the smallest id, so the mapping is stable.

    Defined in ``notebooks/01_spared_database.py``.
    """
    table = _load(organism)
    first = table.reset_index().sort_values("gene_id").drop_duplicates("gene_symbol")
    lookup = pd.Series(first["gene_id"].to_numpy(), index=first["gene_symbol"].to_numpy())
    mapped = lookup.reindex(pd.Index(np.asarray(symbols, dtype=object)))
    return np.where(mapped.isna(), None, mapped.to_numpy(dtype=object))


def fill_symbols(var: pd.DataFrame) -> None:
    """Where a source repeats the Ensembl id as its symbol, take the symbol from the GENCODE table
    (in place; ids GENCODE does not know keep their id as symbol).

    Defined in ``notebooks/01_spared_database.py``.
    """
    for organism, prefix in (("human", "ENSG0"), ("mouse", "ENSMUSG0")):
        todo = var.index.str.startswith(prefix) & (var["gene_symbol"].to_numpy() == var.index.to_numpy())
        if todo.any():
            table = _load(organism)["gene_symbol"]
            found = table.reindex(var.index[todo])
            var.loc[var.index[todo], "gene_symbol"] = found.fillna(pd.Series(var.index[todo],
                                                                             index=var.index[todo]))
