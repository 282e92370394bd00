"""The frozen CLAP and its embeddings: finding and loading the model, the on-disk cache, the extraction engine."""
