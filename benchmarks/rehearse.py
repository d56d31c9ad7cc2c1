#!/usr/bin/env python
"""The real run, rehearsed offline: every chapter at its full-size defaults, and the benchmark CLI.

Everything a Colab user runs is run, through the same code: the chapters' own defaults (paper-size
models, batch 256 in micro-batches, ``pretrained='imagenet'``, the learning-rate search, SEPAL on
a trained stage 1, SpaCKLE before the completed targets) and ``python -m spared_lib.benchmark`` as
its documentation gives it. Only what this offline machine cannot have is substituted:

- **Downloads.** A local HTTP server on 127.0.0.1 serves a mirror of the registry's files built
  from ``shared/data`` (:func:`spared_lib.data.build_mirror`); ``SPARED_DATA_MIRROR`` points the
  registry at it. A fresh cache folder (``SPARED_DATA_DIR``) and no fixtures folder
  (``SPARED_FIXTURES_DIR`` set to a folder that does not exist) make every chapter download what it reads,
  as on Colab. Datasets that have no local copy to mirror (the 26 SpaRED datasets) cannot be
  served: a chapter whose ``DATASET``/``DATASETS`` default is one of them runs on ``her2st_hne``
  instead (the her2st sections with H&E, a registry entry downloaded through the mirror), and the
  report says so.
- **ImageNet weights.** State dicts in torchvision's exact format (real keys and shapes, random
  values) from :func:`spared_lib.models.backbones.write_imagenet_mirror`, served the same way;
  ``SPARED_WEIGHTS_URL`` points the one weights loader at them.
- **Training length.** ``SPARED_MAX_STEPS`` (default 2) caps every training loop.

It prints, per chapter, wall time and peak memory (the kernel's process tree, sampled every half
second) and, per model, the runs, their wall time and peak memory from the results tables of
chapter 6 and of the CLI. The report is also written to ``<work>/rehearsal.json`` and, with
``--save``, to ``spared_lib/resources/results/rehearsal.json``.

    make rehearse                                   # = python benchmarks/rehearse.py
    python benchmarks/rehearse.py --chapters 04,06 --skip-cli --work /tmp/rh

Needs the fixtures folder (``shared/data``) to build the mirror, about 3 GB of disk for the work
folder, and time: on 2 CPU cores chapters 0-3 take about 3 minutes, but one paper-size step of
ViT-B at batch 256 takes minutes on a CPU, so chapter 4 took 36 minutes, chapter 5 20, chapter 6
43, and the CLI 97 minutes at one learning rate (``--cli-args '--lrs 1e-5'``), so about 4-5 hours
at the default five: 6-7 hours in all (the README gives what was measured, part by part). CPU
peaks are the kernel's process, whose heap also holds what glibc kept from earlier runs
(``benchmarks/heap_growth.py``). A GPU machine should be far faster
(not measured yet: none was lent); on a CPU, ``--chapters`` picks what to rehearse.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: The mirrored registry dataset that stands in for datasets without a local copy.
SUBSTITUTE = "her2st_hne"
#: Parameters that name a chapter's data (a registry key, or comma-separated keys), each with the
#: mirrored dataset that replaces it: chapter 7's demonstration slide must stay a Space Ranger folder.
DATA_PARAMETERS = {"DATASET": SUBSTITUTE, "DATASETS": SUBSTITUTE, "DEMO_DATASET": "visium_mouse_cytassist"}
#: The documented command line of the benchmark (spared_lib/benchmark/__main__.py).
CLI = ["-m", "spared_lib.benchmark", "--models", "all", "--targets", "raw,completed"]


# --------------------------------------------------------------------------- the offline world
def build_mirrors(work: Path, fixtures: Path | None = None, archs=None) -> tuple[Path, set[str]]:
    """``<work>/mirror/data`` (registry files) and ``<work>/mirror/weights`` (ImageNet-format
    weights); returns the mirror root and the registry keys whose files are all mirrored."""
    from spared_lib.data import build_mirror
    from spared_lib.models.backbones import write_imagenet_mirror

    root = work / "mirror"
    done = build_mirror(root / "data", source=fixtures)
    complete = {key for key, (found, listed) in done.items() if found == listed}
    if not (root / "weights" / "SHA256SUMS").is_file():
        write_imagenet_mirror(root / "weights", archs=archs)
    return root, complete


def start_server(folder: Path):
    """Serve ``folder`` on 127.0.0.1 (a free port) from a daemon thread; ``(server, base URL)``."""
    from spared_lib.data.mirror import serve

    server = serve(folder, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def rehearsal_env(base_url: str, work: Path, max_steps: int, keep_fixtures: bool = False) -> dict:
    """The environment every chapter and the CLI run in (see the module docstring)."""
    from spared_lib import data
    from spared_lib.data.paths import DATA_ENV, FIXTURES_ENV
    from spared_lib.engine import MAX_STEPS_ENV
    from spared_lib.models.backbones import MIRROR_ENV

    env = {**os.environ, data.MIRROR_ENV: f"{base_url}/data", MIRROR_ENV: f"{base_url}/weights",
           MAX_STEPS_ENV: str(max_steps), DATA_ENV: str(work / "cache" / "data"),
           "TORCH_HOME": str(work / "cache" / "torch"), "PYTHONUNBUFFERED": "1",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    if not keep_fixtures:
        # a folder that does not exist: fixtures_dir() is None, as in a user's clone without
        # shared/data, so the chapters download what they read
        env[FIXTURES_ENV] = str(work / "no-fixtures")
    return env


# --------------------------------------------------------------------------- measuring a run
def run_measured(cmd: list[str], env: dict, cwd: Path, timeout: float, log: Path) -> dict:
    """Run ``cmd`` and sample the resident memory of its whole process tree every 0.5 s.

    Returns ``status`` (``ok``/``failed``/``timeout``), ``returncode``, ``wall_s``, ``peak_gb`` and
    the log's tail."""
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        peak = 0
        status = None
        root = psutil.Process(proc.pid)
        while status is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass  # a process ended between listing and reading: the next sample counts
            try:
                proc.wait(timeout=0.5)
                status = "ok" if proc.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                if time.perf_counter() - t0 > timeout:
                    for p in [*root.children(recursive=True), root]:
                        p.kill()  # only the processes this rehearsal started
                    proc.wait()
                    status = "timeout"
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {"status": status, "returncode": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_gb": round(peak / 2**30, 2), "log": str(log), "tail": tail if status != "ok" else []}


# --------------------------------------------------------------------------- chapters
def chapter_defaults(source: Path) -> dict:
    """The values of the chapter's ``parameters`` cell (executed on its own: plain values)."""
    import jupytext

    nb = jupytext.read(source)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return {}
    scope: dict = {}
    exec(compile(cells[0].source, str(source), "exec"), scope)  # noqa: S102 - our own parameters cell
    return {k: v for k, v in scope.items() if k.isupper()}


def substitutions(defaults: dict, mirrored: set[str]) -> dict:
    """Parameters to change: a data parameter naming datasets the mirror does not hold."""
    out = {}
    for name, substitute in DATA_PARAMETERS.items():
        value = defaults.get(name)
        if not isinstance(value, str) or not value:
            continue
        keys = [k.strip() for k in value.split(",") if k.strip()]
        if any(k not in mirrored for k in keys):
            out[name] = substitute
    return out


def run_chapter(source: Path, work: Path, env: dict, mirrored: set[str], timeout: float) -> dict:
    """Execute one chapter with its defaults (papermill, a fresh kernel, cwd = a scratch folder)."""
    import jupytext

    stem = source.stem
    out_dir = work / "chapters"
    out_dir.mkdir(parents=True, exist_ok=True)
    nb_in = out_dir / f"{stem}.input.ipynb"
    nb = jupytext.read(source)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    jupytext.write(nb, nb_in)
    subs = substitutions(chapter_defaults(source), mirrored)
    cwd = work / "cwd" / stem  # like Colab's /content: nothing of the repository around
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(nb_in), str(out_dir / f"{stem}.ipynb"), "-k", "python3",
           "--cwd", str(cwd), "--no-progress-bar", "--log-level", "WARNING"]
    for k, v in subs.items():
        cmd += ["-p", k, v]
    print(f"[rehearse] {stem}: defaults{f', substituted {subs}' if subs else ''}", flush=True)
    res = run_measured(cmd, env, cwd, timeout, work / "logs" / f"{stem}.log")
    print(f"[rehearse] {stem}: {res['status']} in {res['wall_s']:.0f} s, peak {res['peak_gb']:.1f} GiB", flush=True)
    return {"chapter": stem, "substituted": subs, **res, "tables": [str(p) for p in cwd.rglob("results.csv")]}


def run_cli(work: Path, env: dict, mirrored: set[str], timeout: float, dataset: str | None = None,
            extra: list[str] | None = None) -> dict:
    """``python -m spared_lib.benchmark`` as documented, on a dataset the mirror serves.

    ``extra`` appends documented options of the CLI (e.g. ``--lrs 1e-5``: one learning rate
    instead of five, a fifth of the runs of a grid that takes many CPU hours).

    ``status`` is ``partial`` when the CLI exits with ``EXIT_DOES_NOT_FIT``: the only unfinished
    runs are models this machine's memory cannot hold (paper-size Hist2ST on 24 GiB).
    """
    from spared_lib.benchmark.__main__ import EXIT_DOES_NOT_FIT

    dataset = dataset or SUBSTITUTE
    out = work / "cli"
    cmd = [sys.executable, *CLI, "--datasets", dataset, "--out", str(out), *(extra or [])]
    print(f"[rehearse] CLI: {' '.join(cmd[1:])}", flush=True)
    res = run_measured(cmd, env, work, timeout, work / "logs" / "cli.log")
    if res["status"] == "failed" and res.get("returncode") == EXIT_DOES_NOT_FIT:
        # every run that fits this machine finished; the others were refused by the memory planner
        # before their first step, with its figures (a larger device runs them: the same command)
        res["status"] = "partial"
    print(f"[rehearse] CLI: {res['status']} in {res['wall_s']:.0f} s, peak {res['peak_gb']:.1f} GiB", flush=True)
    return {"chapter": "benchmark CLI", "command": " ".join(["python", *cmd[1:]]), **res,
            "tables": [str(out / "results.csv")] if (out / "results.csv").exists() else []}


def per_model(tables: list[str]) -> list[dict]:
    """Runs per model in the results tables: count, failures, summed wall time, peak memory."""
    import pandas as pd

    from spared_lib.benchmark import ResultsStore
    from spared_lib.benchmark.cells import DOES_NOT_FIT

    frames = []
    for path in tables:
        t = ResultsStore(path).table()
        t["source"] = path
        frames.append(t)
    if not frames:
        return []
    t = pd.concat(frames, ignore_index=True)
    t = t[t["reused_from"].isna()]
    g = t.groupby(["source", "model"], sort=False)
    rows = pd.DataFrame({"runs": g.size(), "failed": g["status"].apply(lambda s: int((s == "failed").sum())),
                         "did_not_fit": g["status"].apply(lambda s: int((s == DOES_NOT_FIT).sum())),
                         "wall_s": g["wall_time_s"].sum().round(1), "peak_gb": g["peak_memory_gb"].max().round(2),
                         "batching": g["batching"].first(), "error": g["error"].first()}).reset_index()
    return rows.to_dict(orient="records")


def print_report(chapters: list[dict], models: list[dict]) -> None:
    print("\nper chapter" + " " * 24 + "status     wall      peak")
    for r in chapters:
        print(f"  {r['chapter']:<32} {r['status']:<8} {r['wall_s'] / 60:6.1f} min {r['peak_gb']:6.1f} GiB"
              + (f"   (data: {r['substituted']})" if r.get("substituted") else ""))
    if models:
        print("\nper model (training runs of the results tables)")
        for r in models:
            src = Path(r["source"]).parts
            where = "CLI" if "cli" in src else src[-4] if len(src) > 3 else r["source"]
            peak = f"{r['peak_gb']:.2f}" if r["peak_gb"] == r["peak_gb"] else "  -"
            print(f"  {where:<16} {r['model']:<12} {r['runs']:3d} runs ({r['failed']} failed, "
                  f"{r.get('did_not_fit', 0)} did not fit) "
                  f"{r['wall_s'] / 60:6.1f} min  peak {peak} GiB  {r['batching'] or ''}"
                  + (f"  error: {r['error'][:160]}" if r["failed"] or r.get("did_not_fit") else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chapters", default="all", help="'all' (the chapters of _toc.yml) or stems/prefixes: 00,04")
    ap.add_argument("--skip-cli", action="store_true", help="do not run the benchmark command line")
    ap.add_argument("--cli-args", default="", help="more options for the CLI, e.g. '--lrs 1e-5' (one learning rate)")
    ap.add_argument("--max-steps", type=int, default=2, help="SPARED_MAX_STEPS for every training loop")
    ap.add_argument("--work", default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per chapter (and for the CLI)")
    ap.add_argument("--keep-fixtures", action="store_true",
                    help="let chapters read shared/data directly (default: hidden, as for a user)")
    ap.add_argument("--save", action="store_true", help="also write spared_lib/resources/results/rehearsal.json")
    ap.add_argument("--strict", action="store_true",
                    help="fail when a model did not fit this machine (default: such runs are reported, "
                         "the rehearsal passes when everything else ran)")
    args = ap.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="spared_rehearsal_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    root, mirrored = build_mirrors(work)
    server, base = start_server(root)
    env = rehearsal_env(base, work, args.max_steps, args.keep_fixtures)
    print(f"[rehearse] work folder {work}; mirror {base} serves {sorted(mirrored)} and ImageNet-format weights; "
          f"SPARED_MAX_STEPS={args.max_steps}", flush=True)
    sources = _chapters(args.chapters)
    chapters = [run_chapter(s, work, env, mirrored, args.timeout) for s in sources]
    if not args.skip_cli:
        chapters.append(run_cli(work, env, mirrored, args.timeout, extra=shlex.split(args.cli_args)))
    server.shutdown()
    models = per_model([t for c in chapters for t in c["tables"]])
    print_report(chapters, models)
    total = time.perf_counter() - t0
    n_passed = sum(passed(c, args.strict) for c in chapters)
    print(f"\nrehearsal: {n_passed} of {len(chapters)} passed in "
          f"{total / 60:.0f} min (load average {os.getloadavg()[0]:.1f})"
          + ("; partial: every run that fits this machine finished, the rest did not fit its memory"
             if any(c["status"] == "partial" for c in chapters) else ""))
    report = {"max_steps": args.max_steps, "mirrored": sorted(mirrored), "total_s": round(total),
              "chapters": chapters, "models": models}
    (work / "rehearsal.json").write_text(json.dumps(report, indent=1, default=str))
    if args.save:
        from spared_lib.resources import save_result

        save_result("rehearsal", report, command="make rehearse")
    return 0 if n_passed == len(chapters) else 1


def passed(result: dict, strict: bool = False) -> bool:
    """A chapter or the CLI passed: ``ok``, or (unless ``strict``) ``partial``, the CLI's report
    that every run this machine can hold finished and the rest did not fit its memory."""
    return result["status"] == "ok" or (not strict and result["status"] == "partial")


def _chapters(spec: str) -> list[Path]:
    sys.path.insert(0, str(ROOT / "tools"))
    from book import toc_notebooks  # the chapters the book executes, in its order

    listed = toc_notebooks()
    if spec == "all":
        return listed
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = [p for p in listed if any(p.stem.startswith(w) for w in wanted)]
    if len(chosen) < len(wanted):
        raise SystemExit(f"--chapters {spec}: choose among {[p.stem for p in listed]}")
    return chosen


if __name__ == "__main__":
    raise SystemExit(main())
