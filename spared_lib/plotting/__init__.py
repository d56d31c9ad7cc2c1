"""Figures of the book: spatial maps over the H&E (matplotlib) and statistical plots (seaborn).

Each area of the book has its own module; this package re-exports their public functions.
Plot helpers take an ``ax`` (created when missing) and return the figure.
"""
from .spatial import spatial_scatter, slide_image  # noqa: F401
from .database import plot_database_overview, plot_gene_detection, plot_missing_fraction, plot_split_sizes  # noqa: F401
from .benchmark import plot_best_model_pie, plot_best_pcc, plot_mse_vs_params, plot_normalised_mse  # noqa: F401
from .preprocessing import plot_delta_distributions, plot_filter_curve, plot_moran_ranking, plot_patch_gallery, plot_pca_by_slide, plot_value_distributions  # noqa: F401
from .context import plot_metric_vs_params  # noqa: F401
from .completion import completion_violin, mse_vs_masking, qualitative_panel, training_curves  # noqa: F401
from .models import plot_expression_maps, plot_per_gene_pcc, plot_training_curves  # noqa: F401
