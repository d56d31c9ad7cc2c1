"""her2st as real multi-patient data: all 28 sections of ../shared/data/her2st (7 patients), the
counts-only sections, the per-patient datasets and the H&E dataset, and their registry entries."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from spared_lib.data import (EXTRA_DATASETS, FIXTURES, datasets_table, fixture_dataset, get_dataset,
                             load_dataset, read_st)

SECTIONS = {"A": 6, "C": 4, "D": 6, "E": 3, "F": 3, "G": 3, "H": 3}
WITH_IMAGE = ("C2", "C3", "C4")
COMMIT = "85df7411b987a7dec3feff9718b869a7a82091ec"


@pytest.fixture(scope="module")
def her2st(fixtures):
    return load_dataset(fixture_dataset("her2st"), load_images=False)


def _nn_median(xy):
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def test_fixture_names_are_one_constant():
    assert FIXTURES == ("her2st", *(f"her2st_{p}" for p in SECTIONS), "her2st_hne",
                        "visium_mouse_cytassist", "visium_human_heart_subset")
    assert set(EXTRA_DATASETS) == set(FIXTURES)


def test_all_28_sections_split_by_patient(her2st, fixtures):
    obs = her2st.obs
    assert len(obs["slide_id"].cat.categories) == 28
    assert obs.groupby("patient", observed=True)["slide_id"].nunique().to_dict() == SECTIONS
    # Inter-patient: every patient's sections sit in one split.
    assert (obs.groupby("patient", observed=True)["split"].nunique() == 1).all()
    split_of = obs.groupby("patient", observed=True)["split"].first().astype(str).to_dict()
    assert split_of == {"A": "train", "C": "train", "D": "train", "E": "train", "F": "train",
                        "G": "val", "H": "test"}
    # Every spot of every counts file is there, and the registry's spot count agrees.
    rows = sum(len(pd.read_csv(p, sep="\t", usecols=[0])) for p in (fixtures / "her2st" / "ST-cnts").glob("*.tsv.gz"))
    assert her2st.n_obs == rows == datasets_table("her2st").loc["her2st", "spots"] == 11549
    assert her2st.uns["dataset"]["combat_key"] == "patient" and her2st.uns["dataset"]["grid"] == "square"
    assert her2st.obs_names.is_unique and her2st.n_vars > 10000


def test_counts_only_sections_have_no_image_and_a_fitted_pitch(her2st):
    for slide in her2st.obs["slide_id"].cat.categories:
        meta = her2st.uns["spatial"][slide]
        sf = meta["scalefactors"]
        if slide in WITH_IMAGE:
            assert meta["fullres_path"].endswith(".jpg") and meta["metadata"]["has_image"]
        else:
            assert meta["images"] == {} and meta["fullres_path"] is None
            assert not meta["metadata"]["has_image"]
        # Patient A's pixel coordinates refer to the repository's smaller images ("_HE_small.jpg"):
        # a 200 µm pitch is ~217 px there and ~290 px on the other patients' images.
        lo, hi = (210, 225) if slide.startswith("A") else (283, 297)
        assert lo < sf["spot_spacing_fullres"] < hi, (slide, sf)
        assert sf["spot_diameter_fullres"] == pytest.approx(sf["spot_spacing_fullres"] / 2)
        xy = her2st.obsm["spatial"][(her2st.obs["slide_id"] == slide).to_numpy()]
        assert (xy > 0).all() and xy.max() < 10000
        # The printed array is slightly warped, so neighbours sit a little closer than the fit.
        assert 0.88 < _nn_median(xy) / sf["spot_spacing_fullres"] < 1.0, slide


def test_counts_only_section_never_needs_the_image(fixtures, tmp_path):
    """C2 copied without its JPEG reads (counts identical), unless the image is required."""
    src = fixtures / "her2st"
    for sub in ("ST-cnts/C2.tsv.gz", "ST-spotfiles/C2_selection.tsv"):
        (tmp_path / sub).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / sub, tmp_path / sub)
    with_image = read_st(src, "C2", load_images=False)
    for load_images in (False, True):
        a = read_st(tmp_path, "C2", load_images=load_images)
        assert a.uns["spatial"]["C2"]["images"] == {} and a.uns["spatial"]["C2"]["fullres_path"] is None
        assert (a.X != with_image.X).nnz == 0
        np.testing.assert_array_equal(a.obsm["spatial"], with_image.obsm["spatial"])
    with pytest.raises(FileNotFoundError, match=r"no full-resolution JPEG.*ST-imgs/C/C2"):
        read_st(tmp_path, "C2", require_image=True)
    # The H&E dataset requires its images; the per-patient dataset does not.
    with pytest.raises(FileNotFoundError, match="ST-imgs/C/C2"):
        load_dataset(get_dataset("her2st_hne").with_root(tmp_path))


@pytest.mark.parametrize("patient", list(SECTIONS))
def test_per_patient_datasets_are_consecutive_sections(patient):
    info = get_dataset(f"her2st_{patient}")
    sections = [f"{patient}{i}" for i in range(1, SECTIONS[patient] + 1)]
    assert list(info.slides) == sections
    # Intra-patient: the last section tests, the one before validates, the rest train.
    assert info.test_slides == (sections[-1],) and info.val_slides == (sections[-2],)
    assert {info.patient_of(s) for s in sections} == {patient}
    assert info.combat_key == "slide_id" and not info.requires_image
    assert {f.slide for f in info.files} == set(sections) and info.folder == "her2st"


def test_hne_dataset_is_the_three_imaged_sections(fixtures):
    info = fixture_dataset("her2st_hne")
    assert info.slides == {"C2": "train", "C3": "train", "C4": "val"} and info.requires_image
    assert sum(f.target.endswith(".jpg") for f in info.files) == 3


def test_her2st_files_are_pinned_to_the_public_commit(fixtures):
    """Every her2st file is a plain git blob of almaan/her2st at the pinned commit (no LFS), so
    raw.githubusercontent.com serves its bytes; the sha256 is that of the identical local copy."""
    info = get_dataset("her2st")
    assert len(info.files) == 2 * 28 + 3
    for f in info.files:
        assert f.url == f"https://raw.githubusercontent.com/almaan/her2st/{COMMIT}/data/{f.target}"
        assert f.sha256 == hashlib.sha256((fixtures / "her2st" / f.target).read_bytes()).hexdigest()
        assert f.sha256_source.startswith("almaan/her2st@85df741")
    assert datasets_table("her2st")["integrity"].eq("pinned").all()
