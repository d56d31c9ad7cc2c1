"""Figures of the book: spatial maps over the H&E (matplotlib) and statistical plots (seaborn).

Each area of the book has its own module; this package re-exports their public functions.
Plot helpers take an ``ax`` (created when missing) and return the figure.
"""
from .spatial import spatial_scatter, slide_image  # noqa: F401
