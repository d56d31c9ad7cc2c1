"""Our vectorised preprocessing against the authors' ``spared`` 2.2.1, on the same input, in one run.

For each input (the real ``visium_mouse_cytassist`` slide, and a synthetic multi-slide dataset of
>= 20,000 spots) both implementations run every step of SPEC §2; the script prints, per step, the
maximum absolute difference of the outputs (genes aligned by id), the gene lists chosen, the time
of each and the speed ratio, then the peak memory of our pipeline on 40,000 spots (a subprocess).

``spared`` declares no dependencies and imports torch, torchvision, torch_geometric, wget, plotly,
opencv, lightning, pyComBat, ... on import. Run this script with a Python where it imports, e.g. a
venv that sees the project's packages and adds spared's own::

    python3.11 -m venv benchmarks/.venv-spared
    echo "$PWD/.venv/lib/python3.11/site-packages" > benchmarks/.venv-spared/lib/python3.11/site-packages/project.pth
    benchmarks/.venv-spared/bin/pip install --no-deps spared==2.2.1
    benchmarks/.venv-spared/bin/pip install wget torch_geometric positional_encodings plotly opencv-python-headless
    benchmarks/.venv-spared/bin/python benchmarks/preprocess_vs_spared.py

(``--setup`` runs these commands.) Where spared cannot be imported the script says so and prints
our own timings only.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.simplefilter("ignore")
os.environ.setdefault("PYTHONWARNINGS", "ignore")


# --------------------------------------------------------------------------- inputs
def synthetic(n_slides: int, spots_per_slide: int = 4500, n_genes: int = 4000, seed: int = 0):
    """Visium-like raw counts: discs of the hex array, smooth spatial programs, NB counts with
    70–95 % zeros, a slide batch effect; real Ensembl ids (human)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from spared_lib.data import gene_table, visium_array

    rng = np.random.default_rng(seed)
    rc, xy = visium_array()
    genes = gene_table("human")
    genes = genes[genes["biotype"] == "protein_coding"].index[:n_genes]
    log_mu = rng.normal(-0.8, 1.3, n_genes)
    loadings = rng.normal(0, 0.6, (4, n_genes))
    n_train = max(1, n_slides - 2)
    splits = ["train"] * n_train + ["val", "test"][:n_slides - n_train]
    blocks, obs, coords = [], [], []
    for s in range(n_slides):
        d = np.hypot(xy[:, 0] - xy[:, 0].mean(), xy[:, 1] - xy[:, 1].mean())
        keep = np.argsort(d + rng.normal(0, 150, len(d)))[:spots_per_slide]
        p = xy[keep]
        w = rng.normal(0, 1 / 800, (4, 2))
        fields = np.cos(p @ w.T + rng.uniform(0, 6.3, 4))  # (n, 4) smooth programs
        lib = rng.lognormal(0, 0.35, len(keep))[:, None] * (0.7 + 0.6 * rng.random())
        mu = np.exp(log_mu + fields @ loadings + rng.normal(0, 0.2, n_genes)) * lib
        lam = rng.gamma(2.0, mu / 2.0)
        blocks.append(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
        obs.append(pd.DataFrame({"slide_id": f"SYN{s}", "patient": f"P{s // 2}",
                                 "split": splits[s],
                                 "array_row": rc[keep, 0], "array_col": rc[keep, 1], "in_tissue": True}))
        coords.append(p * 2.0 + rng.normal(0, 0.3, p.shape))  # 0.5 µm/px, slightly jittered
    obs = pd.concat(obs, ignore_index=True)
    obs.index = [f"{s}:{i}" for i, s in enumerate(obs["slide_id"])]
    obs["slide_id"] = obs["slide_id"].astype("category")
    a = ad.AnnData(sp.vstack(blocks).tocsr(), obs=obs, var=pd.DataFrame(index=genes),
                   obsm={"spatial": np.vstack(coords)})
    a.uns["dataset"] = dict(key="synthetic", organism="human", n_genes=128, combat_key="slide_id",
                            cell_min_counts=10, grid="hex")
    a.uns["spatial"] = {f"SYN{s}": {"scalefactors": {"spot_diameter_fullres": 130.0}} for s in range(n_slides)}
    return a


def real_slide():
    from spared_lib.data import fixture_dataset, load_dataset

    a = load_dataset(fixture_dataset("visium_mouse_cytassist"))
    # This low-depth CytAssist slide keeps only 29 genes at SpaRED's 0.7 real-data percentage;
    # 0.3 keeps ~540 so the median and Moran steps have real work (same value for both sides).
    a.uns["dataset"] = dict(a.uns["dataset"], n_genes=128, real_data_percentage=0.3)
    return a


# --------------------------------------------------------------------------- the two pipelines
def run_ours(adata, cfg: dict) -> tuple[dict, dict]:
    import spared_lib.preprocessing as pp

    out = pp.preprocess(adata, cfg, dtype=np.float64)
    steps = dict(out.uns["preprocessing"]["timings_s"])
    return {"genes": list(out.var_names), "layers": {k: out.layers[k] for k in out.layers},
            "moran": out.var["d_log1p_moran"].to_numpy(),
            "filtered_genes": out.uns["preprocessing"]["genes_ranked"]}, steps


def spared_available() -> str | None:
    """None when ``spared`` imports here, else the reason."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from spared.denoising import denoising  # noqa: F401
            from spared.filtering import filtering  # noqa: F401
            from spared.gene_features import gene_features  # noqa: F401
            from spared.layer_operations import layer_operations  # noqa: F401
    except Exception as exc:  # any missing import of spared's undeclared dependencies
        return f"{type(exc).__name__}: {exc}"
    return None


def _prepare_spared_annotations():
    """spared unzips the GENCODE GTFs (~1.7 GB) on first use although it ships the gene-length
    tables it derives from them; empty placeholders skip that one-off step."""
    import spared

    ann = Path(spared.__file__).parent / "data" / "annotations"
    for name in ("gencode.v43.basic.annotation.gtf", "gencode.vM33.basic.annotation.gtf"):
        if not (ann / name).exists():
            (ann / name).touch()


@contextlib.contextmanager
def _moran_permutations(n_perms):
    """spared computes Moran's I with 1000 permutations whose p-values it never reads; on large
    inputs they take hours, so the synthetic comparison can run it with ``n_perms`` instead (the
    Moran's I values are the same: permutations only produce p-values)."""
    import squidpy as sq

    original = sq.gr.spatial_autocorr
    if n_perms == 1000:
        yield
        return

    def patched(*args, **kw):
        if kw.get("n_perms") == 1000:
            kw["n_perms"] = n_perms
        return original(*args, **kw)

    sq.gr.spatial_autocorr = patched
    try:
        yield
    finally:
        sq.gr.spatial_autocorr = original


def run_spared(adata, cfg: dict, moran_perms=1000) -> tuple[dict, dict]:
    from spared.denoising import denoising
    from spared.filtering import filtering
    from spared.gene_features import gene_features
    from spared.layer_operations import layer_operations as lo

    _prepare_spared_annotations()
    a = adata.copy()
    a.var["gene_ids"] = a.var_names
    params = dict(cell_min_counts=cfg["cell_min_counts"], cell_max_counts=1_000_000, gene_min_counts=10,
                  gene_max_counts=1_000_000, min_exp_frac=0.0, min_glob_exp_frac=0.0,
                  real_data_percentage=cfg["real_data_percentage"], wildcard_genes="None")
    hex_geometry = cfg["grid"] == "hex"
    steps, res = {}, {}
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        t = time.perf_counter()
        a = filtering.filter_dataset(a, params)
        steps["filter"] = time.perf_counter() - t
        res["filtered_genes"], res["filtered_spots"] = list(a.var_names), list(a.obs_names)
        a.layers["counts"] = a.X.toarray()
        t = time.perf_counter()
        a = lo.tpm_normalization(a, cfg["organism"], from_layer="counts", to_layer="tpm")
        steps["tpm"] = time.perf_counter() - t
        t = time.perf_counter()
        a = lo.log1p_transformation(a, from_layer="tpm", to_layer="log1p")
        steps["log1p"] = time.perf_counter() - t
        t = time.perf_counter()
        a = denoising.median_cleaner(a, from_layer="log1p", to_layer="d_log1p", n_hops=4, hex_geometry=hex_geometry)
        steps["adaptive_median"] = time.perf_counter() - t
        res["full"] = {k: (list(a.var_names), np.asarray(a.layers[k], dtype=np.float64))
                       for k in ("tpm", "log1p", "d_log1p")}
        t = time.perf_counter()
        with _moran_permutations(moran_perms):
            a = gene_features.compute_moran(a, hex_geometry=hex_geometry, from_layer="d_log1p")
        a = filtering.filter_by_moran(a, n_keep=cfg["n_genes"], from_layer="d_log1p")
        steps["moran"] = time.perf_counter() - t
        a = a.copy()
        t = time.perf_counter()
        if a.obs[cfg["combat_key"]].nunique() > 1:
            a = lo.combat_transformation(a, batch_key=cfg["combat_key"], from_layer="log1p", to_layer="c_log1p")
            a = lo.combat_transformation(a, batch_key=cfg["combat_key"], from_layer="d_log1p", to_layer="c_d_log1p")
        else:  # pyComBat needs two batches; the original would fail here on a single slide
            res["combat_note"] = "single batch: pyComBat not run (it requires >= 2 batches); layers copied"
            a.layers["c_log1p"] = np.array(a.layers["log1p"])
            a.layers["c_d_log1p"] = np.array(a.layers["d_log1p"])
        steps["combat"] = time.perf_counter() - t
        t = time.perf_counter()
        for src, dst in (("log1p", "deltas"), ("d_log1p", "d_deltas"), ("c_log1p", "c_deltas"), ("c_d_log1p", "c_d_deltas")):
            a = lo.get_deltas(a, from_layer=src, to_layer=dst)
        a.layers["mask"] = a.layers["tpm"] != 0
        steps["deltas"] = time.perf_counter() - t
    res.update(genes=list(a.var_names), layers={k: np.asarray(a.layers[k]) for k in a.layers},
               moran=a.var["d_log1p_moran"].to_numpy(dtype=np.float64))
    return res, steps


# --------------------------------------------------------------------------- comparison
def _maxdiff(x, y, rel=False):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = np.abs(x - y)
    if rel:
        d = d / np.maximum(np.abs(y), 1e-300)
    return float(d.max()) if d.size else 0.0


def compare(name: str, adata, cfg: dict, with_spared: bool, moran_perms=1000):
    import spared_lib.preprocessing as pp

    print(f"\n=== {name}: {adata.n_obs:,} spots x {adata.n_vars:,} genes, "
          f"{adata.obs['slide_id'].nunique()} slide(s) ===", flush=True)
    _warm_up(adata, cfg)
    t = time.perf_counter()
    ours, t_ours = run_ours(adata, cfg)
    total_ours = time.perf_counter() - t
    print(f"ours: {total_ours:.2f} s  ({', '.join(f'{k} {v:.2f}' for k, v in t_ours.items())})", flush=True)
    if not with_spared:
        return {"ours_s": total_ours, "steps_ours": t_ours}
    t = time.perf_counter()
    theirs, t_theirs = run_spared(adata, cfg, moran_perms)
    total_theirs = time.perf_counter() - t
    perms = "its 1000 Moran permutations" if moran_perms == 1000 else f"Moran permutations cut from 1000 to {moran_perms}"
    print(f"spared 2.2.1: {total_theirs:.2f} s (with {perms})", flush=True)

    # 1. the filter
    f = pp.filter_spots_and_genes(adata, cfg["cell_min_counts"], real_data_percentage=cfg["real_data_percentage"])
    A, B = set(f.var_names), set(theirs["filtered_genes"])
    same_filter = A == B and list(f.obs_names) == theirs["filtered_spots"]
    print(f"filter: ours {len(A)} genes / {f.n_obs} spots, spared {len(B)} genes / {len(theirs['filtered_spots'])} "
          f"spots; identical: {same_filter}")
    if A != B:
        ef = f.var["exp_frac"]
        print(f"  only ours: {sorted(A - B)}; only spared: {sorted(B - A)}; exp_frac at the cut: {ef.min():.6f} "
              f"(spared sorts with an unstable quicksort, so ties at the cut are kept in an arbitrary order)")
    # 2. the final genes of the whole pipeline
    same = theirs["genes"] == ours["genes"]
    print(f"selected genes, whole pipeline: identical (same order): {same}; "
          f"overlap {len(set(ours['genes']) & set(theirs['genes']))}/{len(ours['genes'])}")
    # 3. every later step on the same input: ours run on spared's filtered spots and genes
    sub = adata[theirs["filtered_spots"], theirs["filtered_genes"]].copy()
    # keep all of spared's spots and genes (spot totals over the kept genes may be below cell_min_counts)
    cfg_same = dict(cfg, real_data_percentage=1e-12, cell_min_counts=-1)
    same_in, _ = run_ours(sub, cfg_same)
    same_genes = same_in["genes"] == theirs["genes"]
    print(f"on spared's filtered input: selected genes identical (same order): {same_genes}")
    if not same_genes:
        print(f"  ours:   {same_in['genes'][:10]}\n  spared: {theirs['genes'][:10]}")
    pos = {g: i for i, g in enumerate(theirs["genes"])}
    common = [g for g in same_in["genes"] if g in pos]
    ti = [pos[g] for g in common]
    oi = [same_in["genes"].index(g) for g in common]
    rows = []
    full = _full_layers(sub, cfg_same)
    for layer in ("tpm", "log1p", "d_log1p"):
        genes_t, arr_t = theirs["full"][layer]
        p = {g: i for i, g in enumerate(full.var_names)}
        rows.append((f"{layer} (all {len(genes_t)} filtered genes)",
                     _maxdiff(full.layers[layer][:, [p[g] for g in genes_t]], arr_t, rel=layer == "tpm"), layer == "tpm"))
    rows.append(("d_log1p_moran", _maxdiff(same_in["moran"][oi], theirs["moran"][ti]), False))
    for layer in ("counts", "tpm", "log1p", "d_log1p", "c_log1p", "c_d_log1p", "deltas", "d_deltas",
                  "c_deltas", "c_d_deltas", "mask"):
        rel = layer == "tpm"
        rows.append((layer, _maxdiff(same_in["layers"][layer][:, oi], theirs["layers"][layer][:, ti], rel), rel))
    print(f"{'output (same input)':40s} {'max |diff|':>12s}")
    for k, v, rel in rows:
        print(f"{k:40s} {v:12.3g}{'  (relative)' if rel else ''}")
    if "combat_note" in theirs:
        print("  note:", theirs["combat_note"])
    print(f"{'step':18s} {'spared s':>10s} {'ours s':>10s} {'speed-up':>10s}")
    for k in t_theirs:
        o = t_ours.get(k, np.nan)
        print(f"{k:18s} {t_theirs[k]:10.2f} {o:10.3f} {t_theirs[k] / o:10.1f}x")
    print(f"{'total':18s} {total_theirs:10.2f} {total_ours:10.3f} {total_theirs / total_ours:10.1f}x", flush=True)
    return {"ours_s": total_ours, "spared_s": total_theirs, "same_filter": same_filter, "same_genes": same,
            "same_genes_same_input": same_genes, "spared_moran_perms": moran_perms,
            "max_diff": {k: v for k, v, _ in rows}, "steps_ours": t_ours, "steps_spared": t_theirs}


def _warm_up(adata, cfg):
    """Import scanpy/squidpy and compile squidpy's numba kernels before any timing, so that
    neither side pays the one-off costs (both use the same squidpy and scanpy)."""
    import spared_lib.preprocessing as pp

    slides = list(adata.obs["slide_id"].cat.categories[:2])
    sub = adata[adata.obs["slide_id"].isin(slides).to_numpy()].copy()
    sub = sub[np.argsort(sub.obs["array_row"].to_numpy(), kind="stable")[:800]].copy()
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            pp.preprocess(sub, dict(cfg, n_genes=4), dtype=np.float64)
        except ValueError:
            pass  # too little data for the full protocol: the imports and kernels are loaded anyway


def _full_layers(adata, cfg):
    """Our tpm / log1p / d_log1p on all filtered genes (before the Moran selection)."""
    import spared_lib.preprocessing as pp

    f = pp.filter_spots_and_genes(adata, cfg["cell_min_counts"], real_data_percentage=cfg["real_data_percentage"])
    t = pp.log1p(pp.tpm(f, organism=cfg["organism"]))
    return pp.adaptive_median(t, grid=cfg["grid"])


# --------------------------------------------------------------------------- memory
def memory_child(n_spots: int) -> None:
    import spared_lib.preprocessing as pp

    n_slides = int(np.ceil(n_spots / 4500))
    a = synthetic(n_slides, spots_per_slide=n_spots // n_slides)
    import tracemalloc

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    pp.preprocess(a[:1500].copy(), n_genes=8)  # imports first: their memory is not the pipeline's
    tracemalloc.start()  # NumPy reports its buffers to tracemalloc: the pipeline's own peak
    t = time.perf_counter()
    out = pp.preprocess(a)
    seconds = time.perf_counter() - t
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"n_spots": a.n_obs, "n_genes_in": a.n_vars, "seconds": seconds,
                      "rss_before_gb": base, "preprocess_peak_alloc_gb": traced_peak / 2**30,
                      "input_gb": (a.X.data.nbytes + a.X.indices.nbytes + a.X.indptr.nbytes) / 2**30,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "n_genes_filtered": out.uns["preprocessing"]["n_genes_filtered"]}))


def setup_env(path: Path) -> None:
    py = path / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    proj = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "project.pth").write_text(proj + "\n")
    pip = [str(py), "-m", "pip", "install", "--no-deps"]
    subprocess.run(pip + ["spared==2.2.1", "wget", "torch_geometric", "positional_encodings", "plotly",
                          "opencv-python-headless", "xxhash"], check=True)
    print(f"spared venv ready: run {py} {Path(__file__).relative_to(REPO)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spots", type=int, default=22_500, help="synthetic spots compared with spared (>= 20,000)")
    ap.add_argument("--genes", type=int, default=3000, help="synthetic genes before filtering")
    ap.add_argument("--synthetic-moran-perms", type=int, default=None,
                    help="permutations for spared's Moran's I on the synthetic data (original: 1000; default none)")
    ap.add_argument("--memory-spots", type=int, default=40_000)
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "preprocess_vs_spared.json")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--setup", type=Path, nargs="?", const=REPO / "benchmarks" / ".venv-spared",
                    help="create a venv for spared at this path (default benchmarks/.venv-spared)")
    args = ap.parse_args()
    if args.setup:
        return setup_env(args.setup)
    if args.memory_child:
        return memory_child(args.memory_child)

    reason = spared_available()
    if reason:
        print(f"spared 2.2.1 could NOT be imported ({reason}). Only our own timings follow; see this "
              "script's docstring (or --setup) to create its environment.")
    else:
        import importlib.metadata as md

        print(f"spared {md.version('spared')} imported from {sys.prefix}")
    results = {}
    base = dict(cell_min_counts=10, grid="hex", combat_key="slide_id", real_data_percentage=0.7)
    if not args.skip_real:
        a = real_slide()
        results["visium_mouse_cytassist"] = compare("visium_mouse_cytassist (real)", a,
                                                    dict(base, organism="mouse", n_genes=128, real_data_percentage=0.3),
                                                    reason is None)
    if not args.skip_synthetic:
        n_slides = int(np.ceil(args.spots / 4500))
        s = synthetic(n_slides, spots_per_slide=args.spots // n_slides, n_genes=args.genes)
        results["synthetic"] = compare(f"synthetic ({n_slides} slides)", s,
                                       dict(base, organism="human", n_genes=128), reason is None,
                                       moran_perms=args.synthetic_moran_perms)
    if not args.skip_memory:
        results.update(_memory(args.memory_spots))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    old.update(results)  # runs of parts (--skip-*) add to the same file
    args.out.write_text(json.dumps(old, indent=1, default=float))


def _memory(n_spots: int) -> dict:
    print(f"\n=== memory: ours on {n_spots:,} synthetic spots (separate process) ===", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--memory-child", str(n_spots)],
                          capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode or not line:
        print("memory run failed:", proc.stderr[-2000:])
        return {}
    else:
        m = json.loads(line[-1])
        print(f"{m['n_spots']:,} spots x {m['n_genes_in']:,} genes ({m['n_genes_filtered']:,} after filtering): "
              f"{m['seconds']:.1f} s; peak of the pipeline's own allocations {m['preprocess_peak_alloc_gb']:.2f} GB "
              f"(input counts {m['input_gb']:.2f} GB); process peak RSS {m['peak_rss_gb']:.2f} GB, of which "
              f"{m['rss_before_gb']:.2f} GB were reached while generating the data; "
              f"target < 8 GB: {'met' if m['peak_rss_gb'] < 8 else 'NOT met'}")
        return {"memory": m}


if __name__ == "__main__":
    main()
