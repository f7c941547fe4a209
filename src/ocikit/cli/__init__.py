"""The ``ocikit`` command line."""
