"""The SpaRED benchmark: learning-rate search, raw vs SpaCKLE-completed training, results.

Command line::

    python -m spared_lib.benchmark --datasets her2st --models shufflenet,stnet \
        --targets raw,completed --out results/

Nothing here imports torch at import time; training happens in
:func:`spared_lib.training.fit`, called per cell.

Introduced in ``notebooks/06_benchmark.py``.
"""
from .baseline import TRAIN_MEAN, train_mean_metrics, train_mean_results
from .budget import COLAB_T4, GPU, grid_cost, plan_sessions
from .cells import Job, run_cell
from .grid import KEY_COLUMNS, STAGE1_OF, STAGES, TARGETS, Cell, count_runs, lr_grid, parse_targets
from .prepare import dataset_info, prepare_dataset
from .published import CITATION, compare_with_published, load_published_results
from .runner import final_results, run_benchmark, select_lr
from .store import COLUMNS, ResultsStore
from .summary import best_per_dataset, normalised_mse

__all__ = [
    "TARGETS", "STAGES", "STAGE1_OF", "KEY_COLUMNS", "Cell", "Job", "lr_grid", "parse_targets", "count_runs",
    "run_benchmark", "run_cell", "select_lr", "final_results", "ResultsStore", "COLUMNS", "dataset_info",
    "prepare_dataset", "CITATION", "load_published_results", "compare_with_published", "normalised_mse",
    "best_per_dataset", "GPU", "COLAB_T4", "grid_cost", "plan_sessions", "TRAIN_MEAN", "train_mean_metrics", "train_mean_results",
]
