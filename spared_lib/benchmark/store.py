"""The results table: one tidy row per training run, written as soon as the run ends.

The table is the benchmark's memory. A row is appended (CSV) or the file is
atomically replaced (Parquet) right after each run, so an interrupted benchmark
loses at most the run that was in flight, and :meth:`ResultsStore.done_keys` tells
the runner which cells never need to run again.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from spared_lib.metrics import METRICS

from .grid import KEY_COLUMNS, Cell, round_lr

#: Every column of the table, in order: the cell's key (:data:`KEY_COLUMNS`), the metrics of
#: :func:`spared_lib.metrics.compute_metrics` (:data:`spared_lib.metrics.METRICS`), then what the
#: run was (size, time, peak memory, device and precision, how it batched, its weights, the
#: stage-1 run SEPAL refined, the kept checkpoint) and how it ended.
COLUMNS = [*KEY_COLUMNS,
           "target_layer", "best_val_mse", *METRICS, "n_params", "wall_time_s", "peak_memory_gb", "device",
           "precision", "batching", "pretrained", "stage1_run", "stage1_checkpoint", "checkpoint",
           "eval_split", "status", "error", "reused_from", "finished_at"]

_DTYPES = {"lr": float, "seed": int, "steps": int}

#: Columns holding text (or nothing): object dtype with None for missing, whether the rows come
#: from memory or from a file (where an all-empty column would read back as float NaN).
_TEXT = ["dataset", "model", "target", "stage", "target_layer", "device", "precision", "batching", "pretrained",
         "stage1_run", "stage1_checkpoint", "checkpoint", "eval_split", "status", "error", "reused_from",
         "finished_at"]


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    df = df[COLUMNS].astype(_DTYPES)
    for c in _TEXT:
        col = df[c].astype(object)
        df[c] = col.where(col.notna(), None)
    df["lr"] = df["lr"].map(round_lr)
    for c in COLUMNS:
        if c not in _TEXT and df[c].dtype == object:
            df[c] = pd.to_numeric(df[c])
    return df


class ResultsStore:
    """A results table on disk (``.csv`` or ``.parquet``) with resume support.

    Parameters
    ----------
    path
        File to create or extend. The suffix picks the format. CSV is appended row
        by row (a crash can cut at most the last line, which is repaired on open);
        Parquet (needs ``pyarrow``) is rewritten through a temporary file and
        ``os.replace`` after every row.

    Defined in ``notebooks/06_benchmark.py``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.format = self.path.suffix.lower().lstrip(".")
        if self.format not in ("csv", "parquet"):
            raise ValueError(f"ResultsStore: {self.path} must end in .csv or .parquet")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "csv" and self.path.exists():
            self._repair_csv()
        self._rows = self._read()
        if self.format == "csv" and self.path.exists() and self._header() != COLUMNS:
            self._rewrite()  # a table of an older version: same rows, today's columns

    def _header(self) -> list[str]:
        with open(self.path, encoding="utf-8") as fh:
            return next(csv.reader(fh), [])

    # -- reading ---------------------------------------------------------------------------
    def _repair_csv(self) -> None:
        """Drop a half-written last line (the process was killed during a write)."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            warnings.warn(f"{self.path}: dropping an incomplete last line left by an interrupted write")
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)

    def _read(self) -> pd.DataFrame:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return pd.DataFrame(columns=COLUMNS)
        try:
            df = pd.read_csv(self.path) if self.format == "csv" else pd.read_parquet(self.path)
        except Exception as err:  # say which file is broken instead of a parser traceback
            raise ValueError(f"ResultsStore: cannot read the results table {self.path}: {err}") from err
        missing = [c for c in [*KEY_COLUMNS, "status"] if c not in df.columns]
        if missing:
            raise ValueError(f"ResultsStore: {self.path} is not a benchmark results table "
                             f"(missing columns {missing})")
        for c in COLUMNS:
            if c not in df.columns:
                df[c] = np.nan
        return _normalise(df)

    def table(self, latest: bool = True) -> pd.DataFrame:
        """All rows; with ``latest`` only the last row of each cell (a retried failure
        is replaced by its retry)."""
        df = self._rows
        if latest and len(df):
            df = df.drop_duplicates(list(KEY_COLUMNS), keep="last")
        return df.reset_index(drop=True).copy()

    def done_keys(self) -> set[tuple]:
        """Keys (:attr:`Cell.key`) of the cells whose latest row finished successfully."""
        df = self.table()
        df = df[df["status"] == "ok"]
        return set(map(tuple, df[list(KEY_COLUMNS)].itertuples(index=False, name=None)))

    def is_done(self, cell: Cell) -> bool:
        return cell.key in self.done_keys()

    def __len__(self) -> int:
        return len(self._rows)

    # -- writing ---------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        """Write one row (a dict with at least the key columns and ``status``)."""
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise ValueError(f"ResultsStore.append: unknown column(s) {unknown}; known: {COLUMNS}")
        missing = [c for c in [*KEY_COLUMNS, "status"] if c not in row]
        if missing:
            raise ValueError(f"ResultsStore.append: row lacks {missing}")
        full = {c: row.get(c, np.nan) for c in COLUMNS}
        full["lr"] = round_lr(full["lr"])
        new = _normalise(pd.DataFrame([full], columns=COLUMNS))
        if self.format == "csv":
            self._append_csv(full)
        self._rows = new if len(self._rows) == 0 else pd.concat([self._rows, new], ignore_index=True)
        if self.format == "parquet":
            self._rewrite()

    def _rewrite(self) -> None:
        """Write every row through a temporary file and ``os.replace`` (never half a table)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        if self.format == "parquet":
            self._rows.to_parquet(tmp, index=False)
        else:
            self._rows.to_csv(tmp, index=False)
        os.replace(tmp, self.path)

    def _append_csv(self, full: dict) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = not self.path.exists() or self.path.stat().st_size == 0
        if header:
            writer.writerow(COLUMNS)
        writer.writerow(["" if _isnan(full[c]) else full[c] for c in COLUMNS])
        # one write + fsync per row: an interruption leaves whole rows only (or one cut
        # line, which _repair_csv drops)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())


def _isnan(v) -> bool:
    return isinstance(v, float) and np.isnan(v)
