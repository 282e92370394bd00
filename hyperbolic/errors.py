"""Every error that means "the run cannot start or go on as asked", in one place: ``UserError``
and its subclasses. Every entry script's ``main`` catches ``UserError`` alone, logs its message
and exits with status 2.

A subclass's message names the file, row, column or flag at fault and the fix. Errors of the
code itself are never ``UserError``: they keep their traceback. The modules that raise them
re-export them (``hyperbolic.training.trainer.TrainingError`` is this ``TrainingError``).
"""

from __future__ import annotations


class UserError(Exception):
    """Input or settings the run cannot use as given; the message says what to change."""


class ConfigError(UserError, ValueError):
    """A configuration value that is out of range or contradicts another (``config.validate``); the
    message names the flag and the fix, as the entry scripts print it."""


class DatasetError(UserError):
    """Input data (a folder, a parquet file, a class-label file) cannot be used as given; the
    message names the folder/file/column at fault and what to do about it."""


class EmbeddingsError(DatasetError):
    """An ``--embeddings`` folder (or an ``--export-embeddings`` target) cannot be used as given; the
    message names the file, row or column (``hyperbolic.embedding.stored``)."""


class ClapNotFoundError(UserError, FileNotFoundError):
    """The CLAP checkpoint is neither a local folder nor in the ModelScope cache."""


class ClapPrecisionError(UserError, ValueError):
    """``--precision`` names a precision the device cannot run the CLAP forward in."""


class OntologyError(UserError, ValueError):
    """An ontology file that is missing, not ontology JSON, or not a DAG; the message names it."""


class CheckpointError(UserError, ValueError):
    """A projection checkpoint that cannot be used as given; the message names the file."""


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on (bad split, diverged loss, bad resume); the message says what to do."""


class ExportError(UserError, ValueError):
    """The export cannot be made as asked (opset), or its check against PyTorch failed."""


class StudyError(UserError, ValueError):
    """A study that cannot run as asked (``python -m hyperbolic.study``): a bad ``--shard``, a folder
    made with other settings, a fraction too small; the message names the flag or file and the fix."""
