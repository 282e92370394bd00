"""The one error type for bad dataset input; entry scripts map it to exit status 2."""


class DatasetError(Exception):
    """Input data (a folder, a parquet file, a class-label file) cannot be used as given.

    The message names the folder/file/column at fault and what to do about it.
    """
