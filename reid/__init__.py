"""reid: a strong person re-identification baseline regularised by Local Feature Masking.

Importing the package imports the built-in components (datasets, backbones, regularisers, losses,
optimisers, attacks), which register themselves and their config nodes, so every config key exists as soon
as anything of ``reid`` is imported. ``reid.FeatureExtractor`` is the deployment entry point.
"""

__version__ = "0.1.0"

from reid import data, modeling, solver  # noqa: E402,F401  (registration happens at import)
from reid.evaluation import attacks  # noqa: E402,F401


def __getattr__(name: str):  # lazy: the deployment layer (ONNX, TorchScript) is only loaded when used
    if name == "FeatureExtractor":
        from reid.export.extractor import FeatureExtractor
        return FeatureExtractor
    raise AttributeError(f"module 'reid' has no attribute {name!r}")
