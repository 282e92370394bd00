"""Hyperbolic CLAP: geometry, projector, losses, metrics, frozen CLAP, training and evaluation.

The version is recorded in every checkpoint (``hyperbolic_clap_version``), every run's setup.json
and every results file (``test_info.hyperbolic_clap_version``); CHANGELOG.md describes each one."""

__version__ = "0.18.0"
