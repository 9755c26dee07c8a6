"""hymoe: Mixture-of-Experts inference with the dense part on the GPU and routed experts on the CPU."""
from hymoe.engine.llm import LLM, load

__all__ = ["LLM", "load"]
__version__ = "0.1.0"
