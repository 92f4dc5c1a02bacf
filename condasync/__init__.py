"""condasync: mirror a conda channel as a verified static tree, and serve channels."""

__version__ = "0.1.0"
