"""hymoe: Mixture-of-Experts inference with the dense part on the GPU and routed experts on the CPU."""
import os

# oneDNN (torch's bf16 matmul on the CPU) keeps a compiled kernel per shape in two caches of 1,024
# entries each (ideep's and its own), up to 0.7 MB apiece, and decode attention meets a new shape at
# every length: a server's RSS grew 27% over a 10-minute soak (1.7% with 256). 256 entries still hold
# every linear shape in use at once. Both are read at the first matmul; a user's own setting wins.
for _cache in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY"):
    os.environ.setdefault(_cache, "256")

from hymoe.engine.llm import LLM, load  # noqa: E402

__all__ = ["LLM", "load"]
__version__ = "0.1.0"
