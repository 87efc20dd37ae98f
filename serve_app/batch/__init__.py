"""The offline driver: the Ray Data job over Parquet manifests."""
