"""Preparing a dataset for the benchmark once: load, preprocess, SpaCKLE-complete, patches.

The prepared AnnData and its patches are cached under ``<out>/prepared/<name>/``.
The cache matters for more than speed: SpaCKLE's completion depends on its training
run, so a resumed benchmark must train on the *same* ``c_t_log1p`` as the runs
already in the table, not on a fresh completion.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np


def dataset_info(name: str, cache: Path, seed: int = 0, synthetic_kwargs: dict | None = None):
    """Resolve a benchmark dataset name: ``synthetic``, a registry key, a fixture or a folder.

    A name of :data:`spared_lib.data.FIXTURES` (e.g. ``her2st_hne``) reads the local copy in the
    fixtures folder where there is one (the same files as the download); elsewhere (Colab) the
    name goes to :func:`spared_lib.data.load_dataset` like any registry key or folder, which
    downloads it.

    Defined in ``notebooks/06_benchmark.py``.
    """
    from spared_lib import data

    if name == "synthetic":
        kw = {"n_slides": 3, "n_spots": 600, "n_genes": 400, "n_prediction_genes": 32, "seed": seed,
              **(synthetic_kwargs or {})}
        return data.make_synthetic_dataset(cache / "raw", overwrite=True, **kw)
    if name in data.FIXTURES:
        return data.resolve_dataset(name)
    return name  # a registry key or a folder with dataset.json: load_dataset says what is wrong


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "dataset"


def prepare_dataset(name: str, targets: Sequence[str] = ("raw", "completed"), out_dir="results", seed: int = 0,
                    *, spackle_steps: int | None = None, device: str = "auto", synthetic_kwargs: dict | None = None,
                    progress: bool = True):
    """Load, preprocess, complete with SpaCKLE (when ``completed`` is a target) and cut patches.

    Parameters
    ----------
    name
        ``'synthetic'`` (a small synthetic Visium dataset, ``synthetic_kwargs`` to change it),
        a real fixture (``'her2st'``, ...), a SpaRED registry key, or a dataset folder.
    targets
        Benchmark targets; ``completed`` adds SpaCKLE's ``c_t_log1p``.
    out_dir
        Results folder; the cache goes to ``<out_dir>/prepared/<name>/``.
    seed
        Seed of SpaCKLE's training (and of the synthetic data).
    spackle_steps
        SpaCKLE training steps; ``None`` (default) uses :func:`spared_lib.completion.train_spackle`'s
        default, the paper's 10,000 steps with the best validation checkpoint.

    Returns
    -------
    (AnnData, numpy.ndarray)
        The preprocessed AnnData and its ``(n_obs, 224, 224, 3)`` uint8 patches
        (memory-mapped from the cache).

    Defined in ``notebooks/06_benchmark.py``.
    """
    import anndata as ad

    cache = Path(out_dir) / "prepared" / _folder_name(name)
    cache.mkdir(parents=True, exist_ok=True)
    h5, npy, ready = cache / "adata.h5ad", cache / "patches.npy", cache / "READY"
    want_completed = "completed" in targets
    if ready.exists():
        adata = ad.read_h5ad(h5)
        # a completion made with other SpaCKLE steps (e.g. a fast run into the same folder) is redone
        if want_completed and ("c_t_log1p" not in adata.layers
                               or adata.uns.get("spackle_steps") != _spackle_steps(spackle_steps)):
            _complete(adata, cache, seed, spackle_steps, device, progress)
            adata.write_h5ad(h5)
        return adata, np.load(npy, mmap_mode="r")

    from spared_lib.data import load_dataset
    from spared_lib.preprocessing import extract_patches, preprocess

    info = dataset_info(name, cache, seed, synthetic_kwargs)
    adata = preprocess(load_dataset(info), progress=progress)
    if want_completed:
        _complete(adata, cache, seed, spackle_steps, device, progress)
    patches = extract_patches(adata, path=npy, progress=progress)
    patches.flush()
    adata.write_h5ad(h5)
    ready.write_text("prepared\n")  # written last: a half-prepared folder is redone
    return adata, np.load(npy, mmap_mode="r")


def _spackle_steps(steps: int | None) -> int:
    from spared_lib.completion.train import PAPER_STEPS

    return PAPER_STEPS if steps is None else int(steps)


def _complete(adata, cache: Path, seed: int, steps: int | None, device: str, progress: bool) -> None:
    from spared_lib.completion import complete, train_spackle

    steps = _spackle_steps(steps)
    model, _ = train_spackle(adata, steps=steps, seed=seed, device=device, out_dir=cache, progress=progress)
    complete(adata, model, device=device)
    adata.uns["spackle_steps"] = steps

