"""What the synchronous and asyncio clients share: options, typed errors, requests built
from what the caller passed and results read back. Nothing here touches the network."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from vlpserve.client.inputs import ImageInput, image_to_bytes, texts_to_bytes
from vlpserve.client.segmentation import Segmentation
from vlpserve.contract import (
    FRACTIONS,
    IMAGE,
    ITC_SCORE,
    ITM_SCORE,
    LABEL_MAP,
    LABELS,
    PARAM_LOGIT_SCALE,
    SCORES,
    EmbeddingModels,
    Family,
    embedding_models,
)
from vlpserve.dtypes import from_numpy
from vlpserve.errors import (
    ClientError,
    ConfigError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    ServerUnavailable,
)

_ITEM = re.compile(r"\bitem (\d+)")

# (start, size) -> the inputs of that chunk of a call split at max_batch_size
ChunkInputs = Callable[[int, int], list[grpcclient.InferInput]]


def _status(exc: InferenceServerException) -> str:
    return str(exc.status() or "").rsplit(".", 1)[-1]


def translate_error(exc: InferenceServerException, model: str, offset: int = 0) -> ClientError:
    """The typed error for a Triton failure; item numbers shifted by ``offset``."""
    status = _status(exc)
    message = exc.message() or str(exc)
    if offset:
        message = _ITEM.sub(lambda m: f"item {int(m.group(1)) + offset}", message)
    text = f"{model}: {message}"
    if "unknown model" in message or "is not ready" in message or status == "NOT_FOUND":
        return ModelNotReady(text)
    if status == "INVALID_ARGUMENT":
        return InvalidInput(text)
    if status == "DEADLINE_EXCEEDED" or "Deadline Exceeded" in message:
        return DeadlineExceeded(text)
    if status == "UNAVAILABLE":
        return ServerUnavailable(text)
    return ClientError(text)


def bytes_input(name: str, items: list[bytes]) -> grpcclient.InferInput:
    """A BYTES input of shape (items, 1)."""
    array = np.array(items, dtype=object).reshape(-1, 1)
    tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def tensor_inputs(inputs: Mapping[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """Triton inputs from named numpy arrays (the tensor level: shapes as given)."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise TypeError("inputs must be a non-empty mapping of tensor name to numpy array")
    out = []
    for name, value in inputs.items():
        array = np.asarray(value)
        try:
            wire = from_numpy(array.dtype).wire
        except ConfigError as exc:
            raise InvalidInput(f"{name}: unsupported dtype {array.dtype}") from exc
        tensor = grpcclient.InferInput(name, list(array.shape), wire)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def requested(outputs: Sequence[str] | None) -> list[grpcclient.InferRequestedOutput] | None:
    if outputs is None:
        return None
    if isinstance(outputs, str):
        raise TypeError("outputs must be a list of names, not a bare str: wrap it: [name]")
    return [grpcclient.InferRequestedOutput(name) for name in outputs]


def result_arrays(result: Any, names: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Every output of an InferResult (or the requested ones) as numpy arrays."""
    if names is None:
        names = [output.name for output in result.get_response().outputs]
    return {name: np.asarray(result.as_numpy(name)) for name in names}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


def templated(labels: Sequence[str], template: str) -> list[str]:
    """``template`` around each label, checked before any call."""
    if "{}" not in template:
        raise InvalidInput("template must contain '{}' where the label goes")
    texts_to_bytes(labels, "labels")  # a non-empty list of str
    return [template.format(label) for label in labels]


def probabilities(logit_scale: float, image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """softmax(logit_scale * image @ text.T), as CLIP's logits_per_image."""
    return softmax(logit_scale * image.astype(np.float64) @ text.T.astype(np.float64))


def logit_scale_of(model: str, config: dict[str, Any]) -> float:
    parameters = config.get("parameters", {})
    try:
        return float(parameters[PARAM_LOGIT_SCALE]["string_value"])
    except (KeyError, ValueError) as exc:
        raise ModelNotReady(f"{model} has no {PARAM_LOGIT_SCALE}") from exc


@dataclass(frozen=True)
class SegmentRequest:
    """One ``<family>_segment`` call: its inputs, and how to read the answer."""

    model: str
    inputs: list[grpcclient.InferInput]
    outputs: list[grpcclient.InferRequestedOutput]
    labels: list[str]
    image: bytes

    def result(self, result: Any) -> Segmentation:
        return Segmentation(
            label_map=np.asarray(result.as_numpy(LABEL_MAP))[0],
            labels=self.labels,
            scores=np.asarray(result.as_numpy(SCORES))[0],
            fractions=np.asarray(result.as_numpy(FRACTIONS))[0],
            image=self.image,
        )


def segment_request(
    models: EmbeddingModels, image: ImageInput, labels: Sequence[str], template: str | None
) -> SegmentRequest:
    """The request of ``segment``, every argument checked before any call."""
    if models.family is not Family.GROUPVIT:
        raise InvalidInput(f"segment needs a GroupViT server, this client is {models.family.value}")
    texts = (
        texts_to_bytes(labels, "labels")
        if template is None
        else [prompt.encode() for prompt in templated(labels, template)]
    )
    data = image_to_bytes(image, 0)
    image_tensor = grpcclient.InferInput(IMAGE, [1, 1], "BYTES")
    image_tensor.set_data_from_numpy(np.array([[data]], dtype=object))
    label_tensor = grpcclient.InferInput(LABELS, [1, len(texts)], "BYTES")
    label_tensor.set_data_from_numpy(np.array([texts], dtype=object))
    return SegmentRequest(
        model=models.segment.name,
        inputs=[image_tensor, label_tensor],
        outputs=[grpcclient.InferRequestedOutput(n) for n in (LABEL_MAP, SCORES, FRACTIONS)],
        labels=list(labels),
        image=data,
    )


def match_output(head: str) -> str:
    if head not in ("itm", "itc"):
        raise InvalidInput(f"head must be 'itm' or 'itc', got {head!r}")
    return ITM_SCORE if head == "itm" else ITC_SCORE


def check_pairs(images: int, texts: int, what: str) -> None:
    if images != texts:
        raise InvalidInput(f"{images} images but {texts} {what}: give pairs")


class ClientBase:
    """Options and state both clients keep; the arguments are ``Client``'s."""

    def __init__(
        self,
        url: str = "localhost:8001",
        *,
        family: Family | str = Family.CLIP,
        timeout_s: float = 30.0,
        retries: int = 3,
        retry_backoff_s: float = 0.1,
        max_concurrency: int = 8,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if retries < 0 or max_concurrency < 1:
            raise ValueError("retries must be >= 0 and max_concurrency >= 1")
        self.url = url
        family = Family(family)
        # BLIP calls (caption, answer, match) name their models themselves.
        self.models: EmbeddingModels = embedding_models(
            Family.CLIP if family is Family.BLIP else family
        )
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.max_concurrency = max_concurrency
        self._configs: dict[str, dict[str, Any]] = {}
        self._open()

    def _open(self) -> None:
        """Set up the transport (connections, pools); subclasses do."""

    @property
    def family(self) -> str:
        return self.models.family.value

    def _give_up(
        self, exc: InferenceServerException, what: str, offset: int, attempt: int
    ) -> ClientError | None:
        """The error to raise for a failed attempt, or None when it is retried."""
        error = translate_error(exc, what, offset)
        if not isinstance(error, ServerUnavailable) or attempt == self.retries:
            return error
        return None

    def _expired(self, what: str) -> DeadlineExceeded:
        return DeadlineExceeded(f"{what}: no answer within {self.timeout_s} s")
