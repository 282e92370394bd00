"""Repository-level pytest settings: the entry script test_clap_modelscope.py is named like a test
file but is a command; pytest never collects it."""

collect_ignore = ["test_clap_modelscope.py"]
