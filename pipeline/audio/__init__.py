"""Audio <-> log-mel <-> image (the SpectrogramSpec), and the Parquet shards that carry them."""
