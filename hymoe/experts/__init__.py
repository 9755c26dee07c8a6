from hymoe.experts.base import ExpertBackend
from hymoe.experts.torch_backend import TorchExperts

__all__ = ["ExpertBackend", "TorchExperts"]
