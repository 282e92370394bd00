"""The error type for bad dataset input (defined with every other ``UserError`` in
``hyperbolic.errors``); entry scripts map it, as every ``UserError``, to exit status 2."""

from hyperbolic.errors import DatasetError  # noqa: F401 (re-exported)
