"""Exact metrics from score matrices (numpy, no torch): classification and retrieval with tie-aware
ranking, the paired clip bootstrap, and the hierarchy metrics over the ontology. Each is checked
against scikit-learn, scipy, brute force or a closed form in tests/test_metrics.py."""
