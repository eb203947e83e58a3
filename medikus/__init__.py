"""Medi-KUS composition root: the app factory and the ``medikus`` command line."""

__version__ = "0.1.0"
__all__ = ["__version__"]
