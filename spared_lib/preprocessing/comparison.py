"""Tables of the comparison with the original ``spared`` package, from the committed results of
``benchmarks/preprocess_vs_spared.py`` (``spared_lib.resources.load_result("preprocess_vs_spared")``).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

#: Inputs of the benchmark, in the order the chapter shows them, with a short name.
INPUTS = {"visium_mouse_cytassist": "real CytAssist slide", "synthetic": "synthetic, 5 slides"}


def comparison_tables(result: dict) -> dict:
    """The benchmark's results as three tables.

    Parameters
    ----------
    result
        ``load_result("preprocess_vs_spared")`` (``{"provenance": ..., "results": ...}``) or its
        ``results`` part.

    Returns
    -------
    dict of pandas.DataFrame
        ``summary``: one row per input — both times, the speed-up (wall and CPU time), whether the
        filter and the selected genes are identical, the largest output differences.
        ``steps``: seconds per step of SpaRED's protocol and the speed-up, per input.
        ``scaling``: time and memory against the number of spots, per implementation.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import pandas as pd

    res = result.get("results", result)
    summary, steps = [], []
    for key, name in INPUTS.items():
        r = res.get(key)
        if not r:
            continue
        diff = r.get("max_diff", {})
        spared_s = r.get("spared_s")
        summary.append({
            "input": name, "spared 2.2.1 (s)": spared_s, "ours (s)": r["ours_s"],
            "speed-up": spared_s / r["ours_s"] if spared_s else None,
            "speed-up, CPU time": (r["spared_cpu_s"] / r["ours_cpu_s"]) if r.get("spared_cpu_s") else None,
            "same filter": r.get("same_filter"), "same genes, same order": r.get("same_genes"),
            "same genes from the same filtered input": r.get("same_genes_same_input"),
            "max |Δ| log1p": diff.get("log1p"), "max |Δ| d_log1p": diff.get("d_log1p"),
            "max |Δ| Moran's I": diff.get("d_log1p_moran"), "max |Δ| c_d_log1p": diff.get("c_d_log1p")})
        for step, theirs in (r.get("steps_spared") or {}).items():
            ours = r["steps_ours"].get(step)
            steps.append({"input": name, "step": step, "spared 2.2.1 (s)": theirs, "ours (s)": ours,
                          "speed-up": theirs / ours if ours else None})
    scaling = pd.DataFrame([row for row in res.get("scaling", []) if "seconds" in row])
    if len(scaling):
        scaling = scaling.assign(**{"s per 1,000 spots": 1000 * scaling["seconds"] / scaling["n_spots"]})
        scaling = scaling[["impl", "n_spots", "seconds", "s per 1,000 spots", "peak_rss_gb", "working_gb"]].rename(
            columns={"impl": "implementation", "n_spots": "spots", "seconds": "time (s)",
                     "peak_rss_gb": "peak RSS (GB)", "working_gb": "working memory (GB)"})
    return {"summary": pd.DataFrame(summary).set_index("input") if summary else pd.DataFrame(),
            "steps": pd.DataFrame(steps).set_index(["input", "step"]) if steps else pd.DataFrame(),
            "scaling": scaling}
