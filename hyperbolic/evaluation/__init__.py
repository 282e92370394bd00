"""Zero-shot evaluation: scoring models, exact metrics, ball usage, the hierarchy block, the files and tables it writes."""
