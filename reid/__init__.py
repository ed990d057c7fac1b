"""reid: a strong person re-identification baseline regularised by Local Feature Masking."""

__version__ = "0.1.0"
