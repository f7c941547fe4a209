"""ocikit: OCI container images with a registry at its heart."""

__version__ = "0.1.0"
