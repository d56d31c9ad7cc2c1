"""The SpaRED benchmark: learning-rate search, raw vs SpaCKLE-completed training, results.

Command line::

    python -m spared_lib.benchmark --datasets synthetic --models shufflenet,stnet \
        --targets raw,completed --out results/

Nothing here imports torch at import time; training happens in
:func:`spared_lib.training.fit`, called per cell.

Introduced in ``notebooks/06_benchmark.py``.
"""
from .grid import TARGETS, Cell, lr_grid, parse_targets
from .published import compare_with_published, load_published_results
from .runner import final_results, run_benchmark, select_lr
from .store import COLUMNS, METRICS, ResultsStore
from .summary import best_per_dataset, normalised_mse

__all__ = [
    "TARGETS", "Cell", "lr_grid", "parse_targets", "run_benchmark", "select_lr", "final_results",
    "ResultsStore", "COLUMNS", "METRICS", "load_published_results", "compare_with_published",
    "normalised_mse", "best_per_dataset",
]
