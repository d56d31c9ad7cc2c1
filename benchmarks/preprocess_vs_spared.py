"""Our vectorised preprocessing against the authors' ``spared`` 2.2.1, on the same input, in one run.

For each input (the real ``visium_mouse_cytassist`` slide, and a synthetic multi-slide dataset of
22,500 spots x 3,000 genes in 5 slides) both implementations run every step of SPEC §2; the script
prints, per step, the maximum absolute difference of the outputs (genes aligned by id), the gene
lists chosen, the time of each and the speed ratio; a profile of ours on the synthetic input; then
the scaling of time and peak memory with the number of spots (5k ... 44k = SpaRED's largest
dataset; spared's at the sizes given by ``--scaling-spared``), each size in its own process.

Everything it prints goes to ``spared_lib/resources/results/preprocess_vs_spared.json`` (with the
commit, command, machine, date and load), which chapter 2 shows through
``spared_lib.resources.load_result("preprocess_vs_spared")``.

``spared`` declares no dependencies and imports torch, torchvision, torch_geometric, wget, plotly,
opencv, lightning, pyComBat, ... on import. It runs in its own venv that sees the project's packages
and adds spared's own; from a fresh clone (after ``make venv``)::

    .venv/bin/python benchmarks/preprocess_vs_spared.py --setup     # creates benchmarks/.venv-spared
    benchmarks/.venv-spared/bin/python benchmarks/preprocess_vs_spared.py

The second line is the whole benchmark (about 10 minutes on a quiet 2-core machine). Ratios are
measured side by side in one run; on a shared machine the absolute times grow with the load (the
results file records it). Where spared cannot be imported the script says so and measures ours only.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
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
def synthetic(n_slides: int, spots_per_slide=4500, n_genes: int = 4000, seed: int = 0):
    """Visium-like raw counts: discs of the hex array, smooth spatial programs, NB counts with
    70–95 % zeros, a slide batch effect; real Ensembl ids (human). ``spots_per_slide``: one
    number, or one per slide."""
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
        per = spots_per_slide[s] if np.ndim(spots_per_slide) else spots_per_slide
        keep = np.argsort(d + rng.normal(0, 150, len(d)))[:per]
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
        t = time.perf_counter()
        # spared's process_dataset makes the dense counts layer right before its TPM step
        # (spared/layer_operations/layer_operations.py); ours converts inside its TPM step
        a.layers["counts"] = a.X.toarray()
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
    t, c = time.perf_counter(), time.process_time()
    ours, t_ours = run_ours(adata, cfg)
    total_ours, cpu_ours = time.perf_counter() - t, time.process_time() - c
    print(f"ours: {total_ours:.2f} s, CPU {cpu_ours:.2f} s  ({', '.join(f'{k} {v:.2f}' for k, v in t_ours.items())})",
          flush=True)
    if not with_spared:
        return {"ours_s": total_ours, "ours_cpu_s": cpu_ours, "steps_ours": t_ours}
    t, c = time.perf_counter(), time.process_time()
    theirs, t_theirs = run_spared(adata, cfg, moran_perms)
    total_theirs, cpu_theirs = time.perf_counter() - t, time.process_time() - c
    perms = "its 1000 Moran permutations" if moran_perms == 1000 else f"Moran permutations cut from 1000 to {moran_perms}"
    # CPU time of this process: on a machine shared with other work it is the steadier measure
    # (both implementations run on one core here)
    print(f"spared 2.2.1: {total_theirs:.2f} s, CPU {cpu_theirs:.2f} s (with {perms})", flush=True)

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
    print(f"{'total, CPU':18s} {cpu_theirs:10.2f} {cpu_ours:10.3f} {cpu_theirs / cpu_ours:10.1f}x", flush=True)
    return {"ours_s": total_ours, "spared_s": total_theirs, "ours_cpu_s": cpu_ours, "spared_cpu_s": cpu_theirs,
            "same_filter": same_filter, "same_genes": same,
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


# --------------------------------------------------------------------------- profile
def profile_ours(adata, cfg: dict, top: int = 14) -> dict:
    """cProfile of one run of ``preprocess`` (CPU time): per step and the functions of ours and
    of the libraries we call that take the most time, cumulative."""
    import cProfile
    import pstats

    import spared_lib.preprocessing as pp

    prof = cProfile.Profile(time.process_time)
    prof.enable()
    out = pp.preprocess(adata, cfg, dtype=np.float64)
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        if "spared_lib" in file or "sparsetools" in func or func.startswith("<method 'sort'") \
                or func.startswith("<method 'take'") or "_squidpy_graph" in func:
            where = file.split("site-packages/")[-1].split("spared_lib/")[-1]
            rows.append({"function": f"{where}:{line}({func})" if line else func, "calls": ncalls,
                         "own_s": tottime, "cumulative_s": cumtime})
    rows.sort(key=lambda r: -r["cumulative_s"])
    cpu = out.uns["preprocessing"]["cpu_s"]
    print(f"\n=== profile of ours ({adata.n_obs:,} spots, CPU seconds, cProfile) ===")
    print("per step: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    print(f"{'cumulative s':>12s} {'own s':>8s} {'calls':>6s}  function")
    for r in rows[:top]:
        print(f"{r['cumulative_s']:12.3f} {r['own_s']:8.3f} {r['calls']:6d}  {r['function']}")
    return {"steps_cpu_s": cpu, "functions": rows[:top]}


# --------------------------------------------------------------------------- scaling
def _reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak RSS (Linux >= 4.0), so the peak read
    after a step is the step's. False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


class _PeakSampler:
    """Peak RSS by sampling every 5 ms in a thread (where the kernel's peak cannot be reset)."""

    def __init__(self):
        import threading

        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss) / 2**30


def scaling_child(n_spots: int, impl: str, n_genes: int) -> None:
    """One size in a fresh process: time and peak memory of ``preprocess`` (or spared's steps)."""
    import spared_lib.preprocessing as pp

    n_slides = int(np.ceil(n_spots / 4500))
    per_slide = [n_spots // n_slides + (s < n_spots % n_slides) for s in range(n_slides)]
    a = synthetic(n_slides, spots_per_slide=per_slide, n_genes=n_genes)
    cfg = dict(cell_min_counts=10, grid="hex", combat_key="slide_id", real_data_percentage=0.7,
               organism="human", n_genes=128)
    if impl == "ours":
        _warm_up(a, cfg)  # imports and squidpy's compiled kernels are not the pipeline's
    else:
        _prepare_spared_annotations()
    input_gb = (a.X.data.nbytes + a.X.indices.nbytes + a.X.indptr.nbytes) / 2**30
    before = _rss_gb("VmRSS")
    exact = _reset_peak_rss()
    sampler = None if exact else _PeakSampler().__enter__()
    t, c = time.perf_counter(), time.process_time()
    if impl == "ours":
        out = pp.preprocess(a, cfg)
        n_filtered = int(out.uns["preprocessing"]["n_genes_filtered"])
    else:
        res, _ = run_spared(a, cfg, moran_perms=None)
        n_filtered = len(res["filtered_genes"])
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    if sampler is not None:
        sampler.__exit__(None, None, None)
    peak = _rss_gb("VmHWM") if exact else sampler.peak
    print(json.dumps({"impl": impl, "n_spots": int(a.n_obs), "n_slides": n_slides, "n_genes_in": int(a.n_vars),
                      "n_genes_filtered": n_filtered, "seconds": seconds, "cpu_seconds": cpu,
                      "peak_rss_gb": peak, "rss_before_gb": before, "working_gb": peak - before,
                      "input_gb": input_gb, "peak_measured_by": "VmHWM" if exact else "sampling"}))


def scaling(sizes, impl: str, n_genes: int) -> list[dict]:
    rows = []
    for n in sizes:
        proc = subprocess.run([sys.executable, __file__, "--scaling-child", str(n), "--impl", impl,
                               "--genes", str(n_genes)], capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode or not line:
            print(f"  {impl} at {n:,} spots failed: {proc.stderr[-1500:]}")
            rows.append({"impl": impl, "n_spots": n, "failed": proc.stderr[-300:]})
            continue
        m = json.loads(line[-1])
        rows.append(m)
        print(f"  {impl:6s} {m['n_spots']:7,d} spots: {m['seconds']:7.2f} s (CPU {m['cpu_seconds']:6.2f} s), "
              f"peak RSS {m['peak_rss_gb']:.2f} GB (working {m['working_gb']:.2f} GB, input {m['input_gb']:.2f} GB)",
              flush=True)
    return rows


def print_scaling(rows: list[dict]) -> None:
    ok = [r for r in rows if "seconds" in r]
    print(f"\n{'spots':>8s} {'impl':>7s} {'time s':>8s} {'s / 1k spots':>13s} {'peak RSS GB':>12s} {'working GB':>11s}")
    for r in sorted(ok, key=lambda r: (r["impl"], r["n_spots"])):
        print(f"{r['n_spots']:8,d} {r['impl']:>7s} {r['seconds']:8.2f} {1000 * r['seconds'] / r['n_spots']:13.3f} "
              f"{r['peak_rss_gb']:12.2f} {r['working_gb']:11.2f}")
    ours = sorted((r for r in ok if r["impl"] == "ours"), key=lambda r: r["n_spots"])
    if len(ours) >= 2:
        first, last = ours[0], ours[-1]
        print(f"ours: {last['n_spots'] / first['n_spots']:.1f}x the spots take {last['seconds'] / first['seconds']:.1f}x "
              f"the time and {last['working_gb'] / max(first['working_gb'], 1e-9):.1f}x the working memory; "
              f"{last['n_spots']:,} spots in {last['seconds']:.1f} s (target < 10 s) and "
              f"{last['peak_rss_gb']:.2f} GB peak RSS (target < 2 GB)")


# --------------------------------------------------------------------------- setup
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


def _load() -> dict:
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"uptime": up, "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()]}


def _sizes(text: str) -> list[int]:
    return [int(float(x.strip().lower().replace("k", "")) * (1000 if "k" in x.lower() else 1))
            for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spots", type=int, default=22_500, help="synthetic spots compared with spared")
    ap.add_argument("--genes", type=int, default=3000, help="synthetic genes before filtering")
    ap.add_argument("--synthetic-moran-perms", type=int, default=None,
                    help="permutations for spared's Moran's I on the synthetic data (original: 1000; default none)")
    ap.add_argument("--scaling", default="5k,10k,20k,40k,44k", help="spots of the scaling runs of ours")
    ap.add_argument("--scaling-spared", default="5k,10k,20k", help="spots of the scaling runs of spared")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--out", type=Path, default=None,
                    help="results file (default: spared_lib/resources/results/preprocess_vs_spared.json)")
    ap.add_argument("--scaling-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--setup", type=Path, nargs="?", const=REPO / "benchmarks" / ".venv-spared",
                    help="create a venv for spared at this path (default benchmarks/.venv-spared)")
    args = ap.parse_args()
    if args.setup:
        return setup_env(args.setup)
    if args.scaling_child:
        return scaling_child(args.scaling_child, args.impl, args.genes)

    from spared_lib.resources import results_path, save_result

    out_path = args.out or results_path("preprocess_vs_spared")
    load_start = _load()
    print(load_start["uptime"])
    reason = spared_available()
    if reason:
        print(f"spared 2.2.1 could NOT be imported ({reason}). Only our own timings follow; see this "
              "script's docstring (or --setup) to create its environment.")
    else:
        import importlib.metadata as md

        print(f"spared {md.version('spared')} imported from {sys.prefix}")
    old = json.loads(out_path.read_text()).get("results", {}) if out_path.is_file() else {}
    results = {k: v for k, v in old.items() if k not in ("load_start", "load_end", "spared_version")}
    results["spared_version"] = None if reason else "2.2.1"
    results["load_start"] = load_start
    base = dict(cell_min_counts=10, grid="hex", combat_key="slide_id", real_data_percentage=0.7)
    if not args.skip_real:
        a = real_slide()
        results["visium_mouse_cytassist"] = dict(
            compare("visium_mouse_cytassist (real)", a, dict(base, organism="mouse", n_genes=128,
                                                             real_data_percentage=0.3), reason is None),
            input=f"real CytAssist mouse slide, {a.n_obs:,} spots x {a.n_vars:,} genes, 1 slide; "
                  "spared with its 1,000 Moran permutations")
    if not args.skip_synthetic:
        n_slides = int(np.ceil(args.spots / 4500))
        s = synthetic(n_slides, spots_per_slide=args.spots // n_slides, n_genes=args.genes)
        cfg = dict(base, organism="human", n_genes=128)
        results["synthetic"] = dict(
            compare(f"synthetic ({n_slides} slides)", s, cfg, reason is None, moran_perms=args.synthetic_moran_perms),
            input=f"synthetic, {n_slides} slides, {s.n_obs:,} spots x {s.n_vars:,} genes; spared's Moran "
                  "permutations removed (they only give p-values)")
        results["profile"] = profile_ours(s, cfg)
    if not args.skip_scaling:
        print(f"\n=== scaling: {args.genes:,} genes, each size in its own process ===", flush=True)
        rows = scaling(_sizes(args.scaling), "ours", args.genes)
        if reason is None:
            rows += scaling(_sizes(args.scaling_spared), "spared", args.genes)
        results["scaling"] = rows
        print_scaling(rows)
    results["load_end"] = _load()
    print(results["load_end"]["uptime"])
    command = "benchmarks/.venv-spared/bin/python benchmarks/preprocess_vs_spared.py " + " ".join(sys.argv[1:])
    path = save_result("preprocess_vs_spared", results, command=command.strip(), path=out_path)
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
