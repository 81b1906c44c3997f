"""skray: SK-Tuning (semantic knowledge tuning) of LLMs on Ray Train + DeepSpeed, searched with Ray Tune."""

from skray.results import load_results

__all__ = ["load_results"]
__version__ = "0.1.0"
