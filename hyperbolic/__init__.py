"""Hyperbolic CLAP: geometry, projector, losses, metrics, frozen CLAP, training and evaluation."""
