"""Reading AudioSet-style parquet folders: decode, resample, labels."""
