"""Data files shipped with spared_lib, and the committed results of the benchmark scripts.

The benchmark scripts under ``benchmarks/`` write what a chapter quotes to
``spared_lib/resources/results/<name>.json`` with its provenance (commit, command, machine,
date, load), and the chapters read it back with :func:`load_result`. The files are package data,
so a Colab run that installed the library from the repository has them too.

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

#: Folder of the committed results files.
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def results_path(name: str) -> Path:
    """Path of the results file ``name`` (``'preprocess_vs_spared'`` → ``.../results/preprocess_vs_spared.json``)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"results name must be a plain file stem such as 'completion', got {name!r}")
    return RESULTS_DIR / f"{name.removesuffix('.json')}.json"


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _head_commit() -> str | None:
    """The checked-out commit read from ``.git`` directly (no subprocess: cheap enough for import time)."""
    git = Path(__file__).resolve().parents[2] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


#: The commit checked out when this process imported spared_lib.resources: a long benchmark run
#: records it beside the commit at the time it writes its results.
COMMIT_AT_START = _head_commit()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(command: str | None = None) -> dict:
    """Where and how a result was made: commit, command, machine, date and load.

    Parameters
    ----------
    command
        The command that regenerates the result (default: this process's command line).
    """
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "cpu": _cpu_model()}
    try:
        import torch

        machine["torch"] = torch.__version__
        machine["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # a results file of a torch-free script
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "commit_at_start": COMMIT_AT_START,
        "uncommitted_changes": bool(status) if status is not None else None,
        "command": command or " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_1_5_15_min": load,
    }


def save_result(name: str, results, command: str | None = None, path: Path | None = None) -> Path:
    """Write ``{"provenance": ..., "results": results}`` to the results file ``name``.

    ``results`` is anything JSON can hold (NaN is written as ``NaN``). The file is replaced
    atomically, so a reader never sees half of it.
    """
    target = Path(path) if path is not None else results_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"provenance": provenance(command), "results": results}, indent=1,
                              default=_jsonable) + "\n")
    os.replace(tmp, target)
    return target


def _jsonable(value):
    # NumPy scalars and arrays, pandas objects: what benchmark scripts naturally hold
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict(orient="records") if hasattr(value, "columns") else value.to_dict()
    raise TypeError(f"save_result: {type(value).__name__} is not JSON serialisable")


def load_result(name: str) -> dict:
    """Read a committed results file: ``{"provenance": {...}, "results": ...}``.

    Raises
    ------
    FileNotFoundError
        The file is missing; the message names it and the script that writes it.
    ValueError
        The file is not a results file (not JSON, or without ``provenance`` and ``results``).
    """
    path = results_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no results file {path}: it is written by the benchmark script "
                                f"benchmarks/{path.stem}.py (see that script's --help)")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict) or not {"provenance", "results"} <= set(data):
        raise ValueError(f"{path} is not a results file: expected the keys 'provenance' and 'results'")
    return data


__all__ = ["RESULTS_DIR", "load_result", "provenance", "results_path", "save_result"]
