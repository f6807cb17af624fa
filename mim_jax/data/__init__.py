"""Input pipelines: TFDS sources, preprocessing, per-host batching, host-side block masks."""
