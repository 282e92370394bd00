"""Captions: per-text embeddings, caption training and caption retrieval."""
