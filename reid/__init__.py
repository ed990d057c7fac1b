"""reid: a strong person re-identification baseline regularised by Local Feature Masking."""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy, so that "import reid.config" does not load torch, OpenCV and the model code
    if name == "FeatureExtractor":
        from reid.export.extractor import FeatureExtractor
        return FeatureExtractor
    raise AttributeError(f"module 'reid' has no attribute {name!r}")
