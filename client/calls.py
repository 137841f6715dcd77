"""Every client call written once, for both clients.

A call is a *plan*: a generator that yields the remote operations it needs (one, or a list
to run concurrently) and receives their results, then returns the call's answer. ``Client``
carries plans out with threads, ``AsyncClient`` with asyncio; they differ in the transport
only. Failed operations are thrown into the plan, which may handle them (``ready``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from vlpserve.client import blip
from vlpserve.client.inputs import (
    ImageInput,
    image_to_bytes,
    images_to_bytes,
    texts_to_bytes,
)
from vlpserve.client.segmentation import Segmentation
from vlpserve.client.wire import bytes_rows, infer_request, response_arrays
from vlpserve.contract import (
    FRACTIONS,
    IMAGE,
    IMAGE_EMBEDS,
    LABEL_MAP,
    LABELS,
    PARAM_LOGIT_BIAS,
    PARAM_LOGIT_SCALE,
    SCORES,
    TEXT,
    TEXT_EMBEDS,
    TOKEN_COUNT,
    EmbeddingModels,
    Family,
    embedding_models,
)
from vlpserve.errors import ClientError, InvalidInput, ModelNotReady, ServerUnavailable

T = TypeVar("T")


# -- the operations a plan asks for -----------------------------------------------------------


@dataclass(frozen=True)
class Infer:
    """One ModelInfer call; ``offset`` is the caller's index of its first item."""

    request: pb.ModelInferRequest
    offset: int = 0

    @property
    def what(self) -> str:
        return str(self.request.model_name)


@dataclass(frozen=True)
class GetConfig:
    """A model's configuration as a dict (clients cache it)."""

    model: str

    @property
    def what(self) -> str:
        return self.model


@dataclass(frozen=True)
class IsReady:
    """Whether the server (``model`` None) or a model is ready."""

    model: str | None = None

    @property
    def what(self) -> str:
        return self.model or "server"


@dataclass(frozen=True)
class Generate:
    """Requests to a decoupled generation model, sent on one stream; the result is each
    request's full text, in order."""

    requests: list[pb.ModelInferRequest] = field(default_factory=list)

    @property
    def what(self) -> str:
        return str(self.requests[0].model_name)


Op = Infer | GetConfig | IsReady | Generate
Plan = Generator[Op | list[Op], Any, T]


# -- options and retries shared by both clients ------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """What ``Client`` and ``AsyncClient`` take besides the address (see ``Client``)."""

    family: Family = Family.CLIP
    timeout_s: float = 30.0
    retries: int = 3
    retry_backoff_s: float = 0.1
    max_concurrency: int = 8
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", Family(self.family))
        for name in ("tls_ca", "tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
                object.__setattr__(self, "tls", True)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("a client certificate needs both tls_cert and tls_key")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if self.retries < 0 or self.max_concurrency < 1:
            raise ValueError("retries must be >= 0 and max_concurrency >= 1")
        if self.retry_backoff_s < 0:
            raise ValueError("retry_backoff_s must be >= 0")

    def credentials(self) -> Any:
        """gRPC channel credentials for TLS (None: plaintext). Without ``tls_ca`` the
        system's roots are trusted; ``tls_cert`` and ``tls_key`` identify the client
        (mutual TLS)."""
        if not self.tls:
            return None
        import grpc

        def read(path: Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror}") from exc

        return grpc.ssl_channel_credentials(
            read(self.tls_ca), read(self.tls_key), read(self.tls_cert)
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata of every call: the API key, in the header Triton expects."""
        if not self.api_key:
            return ()
        return (("triton-grpc-protocol-authorization", f"Bearer {self.api_key}"),)

    @property
    def models(self) -> EmbeddingModels:
        # BLIP calls (caption, answer, match) name their models themselves.
        return embedding_models(Family.CLIP if self.family is Family.BLIP else self.family)

    def retry_wait_s(self, error: ClientError, attempt: int, remaining_s: float) -> float | None:
        """Seconds to wait before trying a failed attempt again, or None to give up.

        Only ServerUnavailable is retried, at most ``retries`` times, with exponential
        backoff (``retry_backoff_s`` doubling, with up to 10% jitter) while the deadline
        leaves time for another try.
        """
        if not isinstance(error, ServerUnavailable) or attempt >= self.retries:
            return None
        wait = self.retry_backoff_s * 2**attempt * (1 + 0.1 * random.random())
        return wait if wait < remaining_s else None


# -- plans ---------------------------------------------------------------------------------------


def logit_scale_of(model: str, config: dict[str, Any]) -> float:
    try:
        return float(config["parameters"][PARAM_LOGIT_SCALE]["string_value"])
    except (KeyError, ValueError) as exc:
        raise ModelNotReady(f"{model} has no {PARAM_LOGIT_SCALE}") from exc


def logit_bias_of(config: dict[str, Any]) -> float | None:
    """SigLIP's logit_bias from a model's config (None: a softmax family's model)."""
    found = config.get("parameters", {}).get(PARAM_LOGIT_BIAS, {}).get("string_value")
    return None if found is None else float(found)


def batch_size_of(config: dict[str, Any]) -> int:
    return int(config.get("max_batch_size", 0)) or 1


def config(model: str) -> Plan[dict[str, Any]]:
    found: dict[str, Any] = yield GetConfig(model)
    return found


def logit_scale(models: EmbeddingModels) -> Plan[float]:
    """exp(logit_scale) of the served checkpoint, from its text model's config."""
    model = models.text.name
    return logit_scale_of(model, (yield GetConfig(model)))


def ready(models: EmbeddingModels) -> Plan[bool]:
    """True when the server and the family's raw-level models are ready."""
    try:
        if not (yield IsReady()):
            return False
        states = yield [IsReady(models.text.name), IsReady(models.image.name)]
        return all(states)
    except ClientError:
        return False


def models_ready(models: list[str]) -> Plan[list[bool]]:
    """Whether each model is ready; an unknown one is not."""
    if not models:
        return []
    try:
        states: list[bool] = yield [IsReady(model) for model in models]
    except ModelNotReady:
        states = []
        for model in models:  # one at a time: find which are unknown
            try:
                states.append((yield IsReady(model)))
            except ModelNotReady:
                states.append(False)
    return states


ChunkInputs = Callable[[int, int], dict[str, np.ndarray]]  # (start, size) -> inputs


def _chunks(model: str, count: int, size: int, inputs_of: ChunkInputs, *outputs: str) -> list[Op]:
    """Requests of at most ``size`` items each (the server's max_batch_size)."""
    return [
        Infer(infer_request(model, inputs_of(start, size), outputs=list(outputs)), start)
        for start in range(0, count, size)
    ]


def _stacked(responses: Sequence[pb.ModelInferResponse], output: str) -> np.ndarray:
    return np.concatenate([response_arrays(r, [output])[output] for r in responses])


def chunked(model: str, count: int, inputs_of: ChunkInputs, output: str) -> Plan[np.ndarray]:
    """``count`` items in chunks of the model's max_batch_size, sent concurrently; the
    chunks' ``output`` stacked."""
    size = batch_size_of((yield GetConfig(model)))
    return _stacked((yield _chunks(model, count, size, inputs_of, output)), output)


def _rows(name: str, items: list[bytes]) -> ChunkInputs:
    return lambda start, size: {name: bytes_rows(items[start : start + size])}


def embed_texts(models: EmbeddingModels, texts: Sequence[str]) -> Plan[np.ndarray]:
    items = texts_to_bytes(texts)
    return (yield from chunked(models.text.name, len(items), _rows(TEXT, items), TEXT_EMBEDS))


def embed_texts_counted(
    models: EmbeddingModels, texts: Sequence[str]
) -> Plan[tuple[np.ndarray, np.ndarray]]:
    """Embeddings and each text's token count, from the same requests."""
    items = texts_to_bytes(texts)
    model = models.text.name
    size = batch_size_of((yield GetConfig(model)))
    ops = _chunks(model, len(items), size, _rows(TEXT, items), TEXT_EMBEDS, TOKEN_COUNT)
    responses = yield ops
    return _stacked(responses, TEXT_EMBEDS), _stacked(responses, TOKEN_COUNT).reshape(-1)


def embed_images(models: EmbeddingModels, images: Sequence[ImageInput]) -> Plan[np.ndarray]:
    items = images_to_bytes(images)
    plan = chunked(models.image.name, len(items), _rows(IMAGE, items), IMAGE_EMBEDS)
    return (yield from plan)


def templated(labels: Sequence[str], template: str) -> list[str]:
    """``template`` around each label, checked before any call."""
    if "{}" not in template:
        raise InvalidInput("template must contain '{}' where the label goes")
    texts_to_bytes(labels, "labels")  # a non-empty list of str
    return [template.format(label) for label in labels]


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-logits)))


def classify(
    models: EmbeddingModels, images: Sequence[ImageInput], labels: Sequence[str], template: str
) -> Plan[np.ndarray]:
    """softmax(logit_scale * image @ text.T), as CLIP's logits_per_image; for SigLIP
    independent sigmoid(logit_scale * image @ text.T + logit_bias) per label, as it was
    trained. The texts and the images are sent at once."""
    prompts = [p.encode() for p in templated(labels, template)]
    items = images_to_bytes(images)
    text_model, image_model = models.text.name, models.image.name
    text_config, image_config = yield [GetConfig(text_model), GetConfig(image_model)]
    texts = _chunks(
        text_model, len(prompts), batch_size_of(text_config), _rows(TEXT, prompts), TEXT_EMBEDS
    )
    pictures = _chunks(
        image_model, len(items), batch_size_of(image_config), _rows(IMAGE, items), IMAGE_EMBEDS
    )
    responses = yield [*texts, *pictures]
    text = _stacked(responses[: len(texts)], TEXT_EMBEDS).astype(np.float64)
    image = _stacked(responses[len(texts) :], IMAGE_EMBEDS).astype(np.float64)
    logits = logit_scale_of(text_model, text_config) * image @ text.T
    if models.family is Family.SIGLIP:
        bias = logit_bias_of(text_config)
        if bias is None:
            raise ModelNotReady(f"{text_model} has no {PARAM_LOGIT_BIAS}")
        return sigmoid(logits + bias)
    return softmax(logits)


def segment(
    models: EmbeddingModels, image: ImageInput, labels: Sequence[str], template: str | None
) -> Plan[Segmentation]:
    """GroupViT zero-shot segmentation of one image."""
    if models.family is not Family.GROUPVIT:
        raise InvalidInput(f"segment needs a GroupViT server, this client is {models.family.value}")
    texts = (
        texts_to_bytes(labels, "labels")
        if template is None
        else [prompt.encode() for prompt in templated(labels, template)]
    )
    data = image_to_bytes(image, 0)
    inputs = {
        IMAGE: np.array([[data]], dtype=object),
        LABELS: np.array([texts], dtype=object),
    }
    outputs = [LABEL_MAP, SCORES, FRACTIONS]
    response = yield Infer(infer_request(models.segment.name, inputs, outputs=outputs))
    found = response_arrays(response, outputs)
    return Segmentation(
        label_map=found[LABEL_MAP][0].astype(np.int32),  # uint8/uint16 on the wire
        labels=list(labels),
        scores=found[SCORES][0],
        fractions=found[FRACTIONS][0],
        image=data,
    )


def infer(
    model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
) -> Plan[dict[str, np.ndarray]]:
    """One tensor-level request: named arrays in, named arrays out."""
    response = yield Infer(infer_request(model, inputs, outputs=outputs))
    return response_arrays(response, outputs)


def match(images: Sequence[ImageInput], texts: Sequence[str], head: str) -> Plan[np.ndarray]:
    """BLIP ITM probability (``head="itm"``) or ITC cosine (``"itc"``) of each pair."""
    output = blip.match_output(head)
    data = images_to_bytes(images)
    encoded = texts_to_bytes(texts)
    blip.check_pairs(len(data), len(encoded), "texts")

    def pairs(start: int, size: int) -> dict[str, np.ndarray]:
        return {
            IMAGE: bytes_rows(data[start : start + size]),
            TEXT: bytes_rows(encoded[start : start + size]),
        }

    return (yield from chunked(blip.ITM, len(data), pairs, output)).reshape(-1)


def generate(requests: list[pb.ModelInferRequest]) -> Plan[list[str]]:
    """Captions or answers: every request on one stream, the server decodes them together."""
    texts: list[str] = yield Generate(requests)
    return texts
