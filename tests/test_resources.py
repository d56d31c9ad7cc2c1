"""spared_lib.resources: committed results files with provenance."""
import json

import numpy as np
import pytest

from spared_lib import resources


def test_results_round_trip_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "RESULTS_DIR", tmp_path)
    path = resources.save_result("demo", {"ratio": np.float64(20.5), "rows": np.arange(3)}, command="python x.py")
    assert path == tmp_path / "demo.json" and not list(tmp_path.glob(".*tmp"))
    data = resources.load_result("demo")
    assert data["results"] == {"ratio": 20.5, "rows": [0, 1, 2]}
    prov = data["provenance"]
    assert prov["command"] == "python x.py" and prov["machine"]["cpus"] >= 1
    assert len(prov["commit"] or "0" * 40) == 40 and prov["date"].endswith("UTC")
    assert prov["commit_at_start"] == resources.COMMIT_AT_START
    if prov["commit"]:  # in a git checkout: the cheap reader agrees with git itself
        assert resources._head_commit() == prov["commit"]


def test_missing_or_foreign_results_file_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "RESULTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nothing\.json.*benchmarks/nothing\.py"):
        resources.load_result("nothing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        resources.load_result("bad")
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="other.json is not a results file"):
        resources.load_result("other")
    with pytest.raises(ValueError, match="plain file stem"):
        resources.results_path("../etc/passwd")
