"""Hugging Face transformers 4.x and 5.x, the reference every export is measured against.

What changed between the two majors and matters here, kept in one place:

* ``get_text_features`` / ``get_image_features`` return the projected embedding as a tensor
  in 4.x and as an output object in 5.x, whose ``pooler_output`` is that embedding.
* Image processors have two backends in 5.x, torchvision (the default where torchvision is
  installed) and PIL (``backend="pil"``, the fallback); 4.x's slow processor is the PIL one.
  vlpserve's server-side pre-processing reproduces the PIL backend bit for bit, so parity is
  measured against it; the torchvision backend's distance from it is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any


def transformers_major() -> int:
    return int(version("transformers").split(".")[0])


def features(output: Any) -> Any:
    """The projected embedding from ``get_text_features`` / ``get_image_features``."""
    return getattr(output, "pooler_output", output)


def image_processor(source: Any) -> Any:
    """The checkpoint's image processor on its PIL backend (what vlpserve reproduces)."""
    from transformers import AutoImageProcessor

    if transformers_major() >= 5:
        return AutoImageProcessor.from_pretrained(source, backend="pil")
    return AutoImageProcessor.from_pretrained(source, use_fast=False)


def processor(source: Any) -> Any:
    """The checkpoint's processor (tokenizer and image processor), images on the PIL backend."""
    from transformers import AutoProcessor

    loaded = AutoProcessor.from_pretrained(source)
    loaded.image_processor = image_processor(source)
    return loaded


def cache_argument(module: Any) -> str:
    """The keyword a decoder takes its cache by: ``cache`` in 5.x (where ``past_key_values``
    is deprecated), ``past_key_values`` in 4.x."""
    import inspect

    parameters = inspect.signature(module.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    """The cache a decoder returned (``cache`` in 5.x, ``past_key_values`` in 4.x)."""
    found = getattr(output, "cache", None)
    return found if found is not None else output.past_key_values


def cache_layers(cache: Any) -> tuple[tuple[Any, Any, Any, Any], ...]:
    """An encoder-decoder cache as (self key, self value, cross key, cross value) per layer,
    the legacy layout (tuples already in 4.45; 5.x dropped ``to_legacy_cache``)."""
    if isinstance(cache, tuple):
        return tuple(tuple(layer) for layer in cache)  # type: ignore[misc]
    if hasattr(cache, "to_legacy_cache"):
        return tuple(tuple(layer) for layer in cache.to_legacy_cache())  # type: ignore[misc]
    own, cross = cache.self_attention_cache.layers, cache.cross_attention_cache.layers
    return tuple((s.keys, s.values, c.keys, c.values) for s, c in zip(own, cross, strict=True))


def blip_cache(layers: tuple[tuple[Any, ...], ...] = ()) -> Any:
    """BLIP's text decoder cache holding ``layers`` (as ``cache_layers`` gives them), or an
    empty one: an EncoderDecoderCache where its module takes one, the tuples themselves (None
    when empty) where it predates cache objects (transformers 4.45)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from transformers.models.blip import modeling_blip_text

    if not hasattr(modeling_blip_text, "EncoderDecoderCache"):
        return layers or None
    if not layers:
        return EncoderDecoderCache(DynamicCache(), DynamicCache())
    if hasattr(EncoderDecoderCache, "from_legacy_cache"):
        return EncoderDecoderCache.from_legacy_cache(layers)
    return EncoderDecoderCache(layers)
