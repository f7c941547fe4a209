"""Content stores: OCI image layouts on disk, their validation and metadata."""
