"""A warm run never imports transformers: the processor and config load lazily, and the cache
keys read the processor's settings from a memo (EmbeddingCache.processor_key) that gives the same
keys as the processor itself."""

import subprocess
import sys
from pathlib import Path

import pytest

from hyperbolic.embedding.cache import EmbeddingCache, audio_preprocessing, key_digest, text_preprocessing
from hyperbolic.embedding.clap import FrozenClap

REPO = Path(__file__).resolve().parents[1]

WARM = """
import sys
from hyperbolic.embedding.cache import EmbeddingCache
from hyperbolic.embedding.clap import FrozenClap
clap = FrozenClap.load(sys.argv[1], "cpu")
cache = EmbeddingCache(sys.argv[2])
keys = cache.audio(clap).prep, cache.text(clap).prep, clap.embed_dim
print(keys, "transformers" in sys.modules, "modelscope" in sys.modules)
"""


@pytest.mark.slow
def test_memoised_keys_are_the_processor_keys_and_spare_transformers(tiny_clap_dir, tmp_path):
    clap = FrozenClap.load(str(tiny_clap_dir), "cpu")
    cache = EmbeddingCache(tmp_path / "cache")
    want = key_digest(audio_preprocessing(clap)), key_digest(text_preprocessing(clap)), clap.embed_dim
    runs = [subprocess.run([sys.executable, "-c", WARM, str(tiny_clap_dir), str(tmp_path / "cache")], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip() for _ in range(2)]
    assert runs[0] == f"{want} True True"    # first run: the processor is read, and remembered
    assert runs[1] == f"{want} False False"  # warm: the same keys, transformers never imported
    assert cache.audio(clap).prep == want[0]


def test_a_changed_model_file_reads_the_processor_again(tiny_clap_dir, tmp_path, monkeypatch):
    import shutil
    folder = tmp_path / "clap"
    shutil.copytree(tiny_clap_dir, folder)
    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.processor_key(FrozenClap.load(str(folder), "cpu"))
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")  # same settings, another size: the memo is stale
    calls = []
    import hyperbolic.embedding.cache as C
    real = C.processor_parts
    monkeypatch.setattr(C, "processor_parts", lambda clap: calls.append(1) or real(clap))
    assert cache.processor_key(FrozenClap.load(str(folder), "cpu")) == first
    assert calls == [1]


WARM_EVAL = """
import runpy, sys
sys.argv = ["test_clap_modelscope.py"] + sys.argv[1:]
try:
    runpy.run_path("test_clap_modelscope.py", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("MODULES", *(name in sys.modules for name in ("transformers", "modelscope", "matplotlib", "scipy.stats")))
"""


@pytest.mark.slow
def test_a_warm_plain_evaluation_imports_neither_transformers_nor_scipy_stats(tiny_clap_dir, demo_eval_dir,
                                                                              classes_file, tmp_path):
    """scipy.stats (~0.5 s) is imported where tied scores, a hyperbolic model's radius block or a
    hierarchy need it; a plain CLAP evaluation of continuous scores needs none of them."""
    from tests.helpers import eval_argv
    argv = eval_argv(demo_eval_dir, tiny_clap_dir, tmp_path / "r.json", "--class-labels", classes_file,
                     "--cache-dir", tmp_path / "cache", num_workers=0)
    lines = [subprocess.run([sys.executable, "-c", WARM_EVAL, *argv], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.splitlines()[-1] for _ in range(2)]
    assert lines[0].startswith("MODULES True True False")  # cold: CLAP ran (transformers may import scipy.stats)
    assert lines[1] == "MODULES False False False False"   # warm
