"""nsrun: run programs in Linux network namespaces."""

__version__ = "0.1.0"
