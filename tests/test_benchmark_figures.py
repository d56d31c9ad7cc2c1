"""The published reference table and the paper's benchmark figures (Fig. 1b, 4a, 4b) drawn from it."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from spared_lib.benchmark import (best_per_dataset, compare_with_published, load_published_results,  # noqa: E402
                                  normalised_mse)
from spared_lib.models import MODELS  # noqa: E402
from spared_lib.plotting import benchmark as pb  # noqa: E402

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "spared_published_results.csv"
ORIGINAL = {"ShuffleNet": "shufflenet", "STNet": "stnet", "EGN": "egn", "EGGN": "eggn", "HisToGene": "histogene",
            "ViT-B": "vit_b", "ViT-B+Delta": "vit_b_delta", "SEPAL": "sepal", "BLEEP": "bleep", "Hist2ST": "hist2st"}


@pytest.fixture(scope="module")
def pub():
    return load_published_results()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_published_table_shape(pub):
    assert pub.dataset.nunique() == 26 and pub.model.nunique() == 10
    assert set(pub.target) == {"published"}
    # Hist2ST was only run on the two organoid datasets; HisToGene on all but VMB
    assert set(pub[pub.model == "hist2st"].abbreviation) == {"VLO", "VKO"}
    assert (pub.model == "histogene").sum() == 25
    long = load_published_results(wide=False, dropna=False)
    assert len(long) == 26 * 10 * 2 and long.value.isna().sum() == 2 * (24 + 1)
    # spot check against the paper's text: MMBR is the hardest dataset (best PCC 0.16), 10XGMBSP the easiest (0.74)
    best = pub.groupby("abbreviation").PCC.max()
    assert best.idxmin() == "MMBR" and round(best.min(), 2) == 0.16
    assert best.idxmax() == "10XGMBSP" and round(best.max(), 2) == 0.74


def test_published_table_matches_the_source_file(pub):
    if not SOURCE.exists():
        pytest.skip(f"reference file {SOURCE} is absent")
    src = pd.read_csv(SOURCE, dtype=str)
    for metric in ("MSE", "PCC"):
        for orig, model in ORIGINAL.items():
            col = src.set_index("abbreviation")[f"{metric}_{orig}"]
            ours = pub[pub.model == model].set_index("abbreviation")[metric]
            expected = pd.to_numeric(col.replace("-", np.nan)).dropna()
            pd.testing.assert_series_equal(ours.sort_index(), expected.sort_index(), check_names=False)


def test_normalised_mse_and_winners_by_hand(pub):
    norm = normalised_mse(pub)
    assert np.allclose(norm.groupby("dataset").MSE_norm.min(), 1.0)
    vmb = norm[norm.abbreviation == "VMB"].set_index("model")
    # VMB: ShuffleNet 1.093 is the best MSE; BLEEP 1.526
    assert vmb.loc["bleep", "MSE_norm"] == pytest.approx(1.526 / 1.093)
    wins = best_per_dataset(pub).set_index("dataset").model
    assert wins["vicari_mouse_brain"] == "shufflenet"
    pcc = best_per_dataset(pub, "PCC", higher_is_better=True).set_index("dataset").model
    assert pcc["vicari_mouse_brain"] == "stnet"
    with pytest.raises(ValueError, match="lacks column"):
        normalised_mse(pub.drop(columns="MSE"))


def test_fig1b_best_pcc_points(pub):
    raw = pub.assign(target="raw", PCC=pub.PCC - 0.1)
    both = pd.concat([raw, pub.assign(target="completed")])
    fig = pb.plot_best_pcc(both, metric="PCC", data_label="published SpaRED (raw shifted, synthetic contrast)")
    ax = fig.axes[0]
    pts = {c.get_label(): c.get_offsets()[:, 1] for c in ax.collections if c.get_label() in ("raw", "completed")}
    best = pub.groupby("dataset").PCC.max().sort_values(ascending=False)
    np.testing.assert_allclose(pts["completed"], best.values)  # sorted by the completed scenario
    np.testing.assert_allclose(pts["raw"], best.values - 0.1)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(best.index)
    assert "published SpaRED" in ax.get_title()


def test_fig4a_violin_annotations_and_pie(pub):
    fig, (a, b) = plt.subplots(1, 2)
    pb.plot_normalised_mse(pub, ax=a, data_label="published SpaRED")
    stats = normalised_mse(pub).groupby("model").MSE_norm.agg(["mean", "std"]).sort_values("mean")
    labels = [t.get_text() for t in a.get_xticklabels()]
    assert labels[0] == "ViT-B+Δ"  # the paper: ViT-B+Δ has the best mean normalised MSE
    assert labels == [MODELS[m].display for m in stats.index]
    texts = [t.get_text() for t in a.texts]
    assert texts[0].startswith(f"{stats['mean'].iloc[0]:.2f}") and f"± {stats['std'].iloc[0]:.2f}" in texts[0]

    pb.plot_best_model_pie(pub, ax=b, data_label="published SpaRED")
    wins = best_per_dataset(pub).model.value_counts()
    pct = {t.get_text() for t in b.texts if t.get_text().endswith("%")}
    assert pct == {f"{100 * v / 26:.0f}%" for v in wins.values}
    assert "26 datasets" in b.get_title()


def test_fig4b_points_are_mean_normalised_mse_vs_params(pub):
    counts = {m: 10 ** (i + 4) for i, m in enumerate(sorted(pub.model.unique()))}
    fig = pb.plot_mse_vs_params(pub, n_params=counts, data_label="published SpaRED")
    ax = fig.axes[0]
    xy = np.vstack([c.get_offsets() for c in ax.collections])
    mean = normalised_mse(pub).groupby("model").MSE_norm.mean()
    expected = np.array([[counts[m], mean[m]] for m in mean.index])
    np.testing.assert_allclose(xy[np.argsort(xy[:, 0])], expected[np.argsort(expected[:, 0])])
    assert ax.get_xscale() == "log"
    # without counts for some models they are left out and named
    fig = pb.plot_mse_vs_params(pub, n_params={"stnet": 7e6, "shufflenet": 4.7e5}, data_label="published SpaRED")
    points = np.vstack([c.get_offsets() for c in fig.axes[0].collections])
    assert len(points) == 2 and "no parameter count" in fig.axes[0].get_title()


def test_one_target_must_be_chosen(pub):
    both = pd.concat([pub.assign(target="raw"), pub.assign(target="other")])
    with pytest.raises(ValueError, match="pass target"):
        pb.plot_normalised_mse(both, data_label="published SpaRED")
    with pytest.raises(ValueError, match="no rows with target"):
        pb.plot_best_model_pie(pub, target="completed", data_label="published SpaRED")


def test_compare_with_published_only_shared_datasets(pub):
    ours = pd.DataFrame({"dataset": ["vicari_mouse_brain", "synthetic"], "model": ["stnet", "stnet"],
                         "target": ["raw", "raw"], "MSE": [1.0, 2.0], "PCC-Gene": [0.3, 0.1]})
    cmp = compare_with_published(ours)
    assert len(cmp) == 1 and cmp.MSE_published.iloc[0] == 1.113 and cmp.PCC_published.iloc[0] == 0.2503
    assert compare_with_published(ours.iloc[1:]).empty


def test_raw_vs_completed_figure_draws_models_and_the_baseline():
    res = pd.DataFrame({"model": ["shufflenet", "shufflenet", "histogene", "histogene"],
                        "target": ["raw", "completed"] * 2, "MSE": [1.0, 1.1, 1.2, 1.15]})
    base = pd.DataFrame({"model": ["train_mean"] * 2, "target": ["raw", "completed"], "MSE": [1.3, 1.35]})
    fig = pb.plot_raw_vs_completed(res, base, data_label="her2st_hne")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ShuffleNet", "HisToGene"]  # sorted by raw MSE
    assert "her2st_hne" in ax.get_title()
    xs = sorted(round(line.get_xdata()[0], 3) for line in ax.get_lines())  # the two dashed baselines
    assert xs == [1.3, 1.35]
    with pytest.raises(ValueError, match="data_label"):
        pb.plot_raw_vs_completed(res)
    with pytest.raises(ValueError, match="raw' or 'completed"):
        pb.plot_raw_vs_completed(res.assign(target="published"), data_label="x")
