"""Build the compact gene table shipped in ``spared_lib/resources`` from a GENCODE GTF.

One row per gene: Ensembl ``gene_id`` (version suffix removed), ``gene_symbol``, ``biotype`` and
``length`` = the length of the union of all the gene's exons (the "merged" length the SpaRED
preprocessing divides counts by for TPM). Introduced in ``notebooks/01_spared_database.py``.

Usage
-----
    python scripts/build_gene_table.py gencode.v43.basic.annotation.gtf.gz \
        spared_lib/resources/genes_human_gencode_v43.tsv.gz

The GTFs come from GENCODE (https://www.gencodegenes.org/) or, offline, from the PyPI wheel
``spared==2.2.1`` (``pip download --no-deps spared==2.2.1``; ``spared/data/annotations/``).
"""
from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import pandas as pd

GTF_COLUMNS = ["seqname", "source", "feature", "start", "end", "score", "strand", "frame", "attributes"]


def read_exons(gtf: Path) -> pd.DataFrame:
    """Exon rows of a GTF with ``gene_id``, ``gene_symbol``, ``biotype``, ``start``, ``end``."""
    gtf = Path(gtf)
    if not gtf.exists():
        raise FileNotFoundError(f"GTF file not found: {gtf}")
    opener = gzip.open if gtf.suffix == ".gz" else open
    with opener(gtf, "rt") as handle:
        table = pd.read_csv(handle, sep="\t", comment="#", header=None, names=GTF_COLUMNS,
                            usecols=["feature", "start", "end", "attributes"],
                            dtype={"feature": "category", "start": np.int64, "end": np.int64})
    exons = table[table["feature"] == "exon"]
    if exons.empty:
        raise ValueError(f"{gtf}: no exon rows, is this a GTF file?")
    attrs = exons["attributes"]
    out = pd.DataFrame({
        "gene_id": attrs.str.extract(r'gene_id "([^"]+)"', expand=False),
        "gene_symbol": attrs.str.extract(r'gene_name "([^"]+)"', expand=False),
        "biotype": attrs.str.extract(r'gene_type "([^"]+)"', expand=False),
        "start": exons["start"].to_numpy(),
        "end": exons["end"].to_numpy(),
    })
    # Pseudo-autosomal copies on chrY (GENCODE suffix _PAR_Y) share the chrX gene's id once the
    # version is stripped; the chrX copy is the one quantified by Space Ranger references.
    out = out[~out["gene_id"].str.endswith("_PAR_Y")]
    out["gene_id"] = out["gene_id"].str.replace(r"\.\d+$", "", regex=True)
    return out


def merged_exon_length(exons: pd.DataFrame) -> pd.Series:
    """Length of the union of each gene's exon intervals (GTF coordinates are 1-based, closed)."""
    ex = exons.sort_values(["gene_id", "start", "end"])
    gene = ex["gene_id"].to_numpy()
    start = ex["start"].to_numpy()
    end = ex["end"].to_numpy()
    # Running maximum of exon ends within a gene: an exon opens a new merged block when it
    # starts after everything seen so far in that gene has ended.
    run_end = ex.groupby("gene_id", sort=False)["end"].cummax().to_numpy()
    first = np.r_[True, gene[1:] != gene[:-1]]
    prev_end = np.r_[0, run_end[:-1]]
    new_block = first | (start > prev_end)
    block = np.cumsum(new_block)
    blocks = pd.DataFrame({"gene_id": gene, "block": block, "start": start, "end": end})
    per_block = blocks.groupby("block").agg(gene_id=("gene_id", "first"), start=("start", "min"),
                                            end=("end", "max"))
    per_block["len"] = per_block["end"] - per_block["start"] + 1
    return per_block.groupby("gene_id")["len"].sum()


def build_gene_table(gtf: Path) -> pd.DataFrame:
    """Compact gene table (gene_id, gene_symbol, biotype, length) from a GENCODE GTF."""
    exons = read_exons(gtf)
    meta = exons.drop_duplicates("gene_id").set_index("gene_id")[["gene_symbol", "biotype"]]
    table = meta.join(merged_exon_length(exons).rename("length"))
    table["length"] = table["length"].astype(np.int64)
    return table.sort_index().reset_index()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gtf", type=Path, help="GENCODE GTF (.gtf or .gtf.gz)")
    parser.add_argument("out", type=Path, help="output table (.tsv.gz)")
    args = parser.parse_args(argv)
    table = build_gene_table(args.gtf)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the gzip bytes reproducible, so rebuilding does not show up as a change in git.
    with gzip.GzipFile(args.out, "wb", mtime=0) as handle:
        handle.write(table.to_csv(sep="\t", index=False).encode())
    print(f"{args.out}: {len(table)} genes, {args.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
