"""Models: loading (Hub id, local directory, `builtin:` name) and the built-in models' registry."""

from copsd.models.cache import atomic_build, cache_dir, recipe_hash
from copsd.models.load import LoadedModel, load_model, load_tokenizer, resolve_device, resolve_dtype

__all__ = [
    "LoadedModel",
    "atomic_build",
    "cache_dir",
    "load_model",
    "load_tokenizer",
    "recipe_hash",
    "resolve_device",
    "resolve_dtype",
]
