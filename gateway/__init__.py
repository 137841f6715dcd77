"""An OpenAI-compatible HTTP front door over vlpserve's gRPC client: ``/v1/embeddings`` for
texts and images (CLIP, GroupViT), ``/v1/chat/completions`` for BLIP captions and answers,
``/v1/models``. ``vlpserve openai`` runs it (``pip install 'vlpserve[openai]'``)."""

from vlpserve.gateway.app import GatewayOptions, create_app

__all__ = ["GatewayOptions", "create_app"]
