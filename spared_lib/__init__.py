"""spared_lib — the library behind the spared-book tutorials."""
__version__ = "0.1.0"
