"""keep_freed_memory: after it, freeing and reallocating a block larger than glibc's largest
dynamic mmap threshold (32 MB) no longer faults its pages in again."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys
import numpy as np
from hyperbolic.embedding.memory import keep_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        a = np.ones(16 << 20, dtype=np.float32)  # 64 MB, every page touched
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults()
ok = keep_freed_memory()
faults()  # the first block after the change is still faulted in once
print(default, faults(), ok)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, check=True)
    default, kept, ok = out.stdout.split()
    assert ok == "True"
    # numpy asks for 2 MB pages on large arrays, so a 64 MB block is at least 32 faults when it is
    # mapped afresh (4 KB pages: 16,384); 8 blocks: at least 256.
    huge_pages = 8 * (64 << 20) // (2 << 20)
    assert int(default) >= huge_pages     # every block mapped and faulted in again
    assert int(kept) < huge_pages // 8    # reused from the heap
