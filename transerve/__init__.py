"""transerve: take a Hugging Face transformers model to production on TorchServe."""

__version__ = "0.1.0"
