"""Figures of the book: spatial maps over the H&E (matplotlib) and statistical plots (seaborn).

Each area of the book has its own module; this package re-exports their public functions.
One convention for all of them (see :mod:`spared_lib.plotting._common`): ``ax=`` takes the axes
to draw on (one, or one per panel; a new figure when None), ``data_label=`` names the data in the
title, the function returns the figure, and colour bars of expression carry their unit
(:data:`EXPRESSION_UNIT`, log2(TPM+1)).
"""
from ._common import EXPRESSION_UNIT, gene_index, gene_label, glue, layer_unit  # noqa: F401
from .spatial import spatial_scatter, slide_image  # noqa: F401
from .database import plot_database_overview, plot_gene_detection, plot_missing_fraction, plot_split_sizes  # noqa: F401
from .benchmark import (plot_best_model_pie, plot_best_pcc, plot_metric_vs_params, plot_mse_vs_params,  # noqa: F401
                        plot_normalised_mse, plot_raw_vs_completed)
from .preprocessing import (plot_delta_distributions, plot_filter_curve, plot_moran_ranking,  # noqa: F401
                            plot_patch_gallery, plot_pca_by_slide, plot_preprocessing_scaling, plot_value_distributions)
from .training import plot_training_curves  # noqa: F401
from .completion import completion_violin, mse_vs_masking, qualitative_panel, reduction_vs_masking, training_input_study  # noqa: F401,E501
from .models import plot_expression_maps, plot_per_gene_pcc  # noqa: F401
