"""Building blocks shared by every separator family."""

from querysep.nn.film import FiLM

__all__ = ["FiLM"]
