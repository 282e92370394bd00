"""The error type for bad dataset input; entry scripts map it (as every ``UserError``) to exit status 2."""

from hyperbolic.errors import UserError


class DatasetError(UserError):
    """Input data (a folder, a parquet file, a class-label file) cannot be used as given.

    The message names the folder/file/column at fault and what to do about it.
    """
