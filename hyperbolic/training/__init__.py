"""Training the projector on cached CLAP embeddings: the objective, one step, the epoch loop, the run folder."""
