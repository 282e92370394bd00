"""Poincaré-ball geometry: pure functions over tensors (``poincare``) and the earlier scripts' formulas (``legacy``)."""
