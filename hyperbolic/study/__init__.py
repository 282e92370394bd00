"""``python -m hyperbolic.study``: where does the hyperbolic geometry help? A grid of geometries x
projection sizes x training-data fractions x seeds, trained on one set of frozen CLAP embeddings and
scored on one set of eval clips, with seed-averaged paired bootstrap intervals (docs/study.md)."""
