"""BLIP served end to end: captions, streaming, VQA and ITM equal Hugging Face's."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from vlpserve.client import Client, InvalidInput
from vlpserve.export.hf import processor as pil_processor

ITM_ATOL = 1e-4  # served ITM and ITC scores against Hugging Face's
QUESTIONS = ["what is this?", "how many cats are there?", "where is it?", "is it red?"]


@pytest.fixture(scope="module")
def client(triton):
    with Client(triton.grpc_url, family="blip", timeout_s=120) as client:
        yield client


@pytest.fixture(scope="module")
def hf(blip_checkpoints):
    import transformers

    classes = {
        "caption": "BlipForConditionalGeneration",
        "itm": "BlipForImageTextRetrieval",
        "vqa": "BlipForQuestionAnswering",
    }
    processor = pil_processor(blip_checkpoints["caption"])
    models = {
        kind: getattr(transformers, name).from_pretrained(blip_checkpoints[kind]).eval()
        for kind, name in classes.items()
    }
    return models, processor


def _images(photos) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in photos.values()]


@pytest.mark.parametrize(
    ("prompt", "beams", "penalty"),
    [(None, 1, 1.0), ("a picture of", 1, 1.0), (None, 3, 1.0), ("a picture of", 3, 1.4)],
)
def test_captions_equal_hugging_face(client, hf, photos, prompt, beams, penalty) -> None:
    import torch

    models, processor = hf
    served = client.caption(
        list(photos.values()),
        prompt=prompt,
        max_new_tokens=12,
        num_beams=beams,
        repetition_penalty=penalty,
    )
    for image, caption in zip(_images(photos), served, strict=True):
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            ids = models["caption"].generate(
                **inputs, max_new_tokens=12, num_beams=beams, repetition_penalty=penalty
            )
        assert caption == processor.decode(ids[0], skip_special_tokens=True)
        if prompt:
            assert caption.startswith(prompt)


def test_stream_pieces_join_into_the_caption(client, photos) -> None:
    photo = photos["astronaut.png"]
    pieces = list(client.stream_caption(photo, prompt="a picture of", max_new_tokens=10))
    assert len(pieces) > 1
    assert pieces[0].startswith("a picture of")
    assert "".join(pieces) == client.caption([photo], prompt="a picture of", max_new_tokens=10)[0]


def test_cancelled_stream_frees_the_server(client, photos) -> None:
    stream = client.stream_caption(photos["rocket.jpg"], max_new_tokens=256)
    first = next(stream)
    stream.close()  # cancels the request on the server
    assert first
    started = time.monotonic()
    assert client.caption([photos["coffee.png"]], max_new_tokens=5)[0]
    assert time.monotonic() - started < 30


def test_answers_equal_hugging_face(client, hf, photos) -> None:
    import torch

    models, processor = hf
    questions = QUESTIONS
    served = client.answer(list(photos.values()), questions, max_new_tokens=6)
    for image, question, answer in zip(_images(photos), questions, served, strict=True):
        inputs = processor(images=image, text=question, return_tensors="pt")
        with torch.no_grad():
            ids = models["vqa"].generate(**inputs, max_new_tokens=6)
        assert answer == processor.decode(ids[0], skip_special_tokens=True)


def test_match_equals_hugging_face(client, hf, photos) -> None:
    import torch

    models, processor = hf
    images = _images(photos)
    texts = ["a cat", "a cup of coffee on a table", "an astronaut", "a rocket launch"]
    itm = client.match(list(photos.values()), texts)
    itc = client.match(list(photos.values()), texts, head="itc")
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = models["itm"](**inputs, use_itm_head=True).itm_score
        cosine = models["itm"](**inputs, use_itm_head=False).itm_score
    expected = logits.softmax(dim=1)[:, 1].numpy()
    np.testing.assert_allclose(itm, expected, atol=ITM_ATOL)
    np.testing.assert_allclose(itc, np.diag(cosine.numpy()), atol=ITM_ATOL)
    # The pairs' true scores lie far apart: a server returning one constant would fail.
    assert np.ptp(expected) >= 100 * ITM_ATOL and np.ptp(np.diag(cosine.numpy())) >= 0.1


def test_seeded_blip_listens_to_image_and_question(client, photos) -> None:
    """The tiny checkpoints' outputs depend on the image (and VQA's on the question): the
    tests above, which compare with Hugging Face, can then see an image mixed up."""
    images = list(photos.values())
    for prompt in (None, "a picture of"):
        captions = client.caption(images, prompt=prompt, max_new_tokens=12)
        assert len(set(captions)) == len(images), captions
    for image in images:
        answers = client.answer([image] * len(QUESTIONS), QUESTIONS, max_new_tokens=6)
        assert len(set(answers)) >= 2, answers
    per_image = [client.answer(images, [question] * 4, max_new_tokens=6) for question in QUESTIONS]
    assert all(len(set(answers)) >= 2 for answers in per_image), per_image


def test_outputs_follow_images_swapped_within_a_batch(client, photos) -> None:
    """Images reordered inside one call (one continuous batch, one ITM batch): every
    output moves with its image."""
    images = list(photos.values())
    order = [1, 0, 3, 2]
    swapped = [images[i] for i in order]
    texts = ["a cat", "a cup of coffee", "an astronaut", "a rocket"]

    def permuted(values):
        return [values[i] for i in order]

    captions = client.caption(images, max_new_tokens=12)
    assert client.caption(swapped, max_new_tokens=12) == permuted(captions)
    beams = client.caption(images, max_new_tokens=8, num_beams=3)
    assert client.caption(swapped, max_new_tokens=8, num_beams=3) == permuted(beams)
    answers = client.answer(images, QUESTIONS, max_new_tokens=6)
    assert client.answer(swapped, permuted(QUESTIONS), max_new_tokens=6) == permuted(answers)
    itm = client.match(images, texts)
    np.testing.assert_allclose(client.match(swapped, permuted(texts)), permuted(itm), atol=1e-6)
    # same text for every image: the scores still follow the images
    same = client.match(images, ["a cat"] * 4)
    np.testing.assert_allclose(client.match(swapped, ["a cat"] * 4), permuted(same), atol=1e-6)
    assert np.ptp(same) >= 100 * ITM_ATOL


def test_engine_work_on_the_metrics_endpoint(client, triton, photos) -> None:
    """The generation engine's own work (Triton's statistics see only the admission call)
    is counted on Triton's metrics endpoint, per phase."""
    from vlpserve.benchmarks.triton_stats import metrics_page, parse_engine_metrics

    before = parse_engine_metrics(metrics_page(triton.metrics_url))
    client.caption(list(photos.values())[:2], max_new_tokens=5)
    after = parse_engine_metrics(metrics_page(triton.metrics_url))

    def grew(phase: str, name: str) -> float:
        key = ("blip_caption", phase, name)
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("encode", "calls") == 2 and grew("encode", "rows") == 2
    assert grew("encode", "seconds") > 0
    assert grew("first", "rows") == 2  # one row per greedy request
    assert 1 <= grew("step", "calls") <= 8  # at most 4 steps each, fewer when batched
    assert grew("step", "seconds") > 0


def test_bad_generation_requests(client, photos) -> None:
    good = photos["chelsea.png"]
    with pytest.raises(InvalidInput, match="IMAGE item 1: cannot decode"):
        client.caption([good, b"not an image"], max_new_tokens=3)
    with pytest.raises(InvalidInput, match=r"MAX_NEW_TOKENS must be in 1\.\.256, got 1000"):
        client.caption([good], max_new_tokens=1000)
    with pytest.raises(InvalidInput, match=r"NUM_BEAMS must be in 1\.\.8, got 20"):
        client.caption([good], num_beams=20)
    with pytest.raises(InvalidInput, match="PROMPT is 601 tokens"):
        client.caption([good], prompt="word " * 600)
    with pytest.raises(InvalidInput, match="max_new_tokens"):
        client.caption([good], max_new_tokens=0)  # checked before sending
    with pytest.raises(InvalidInput, match="2 images but 1 questions"):
        client.answer([good, good], ["why?"])
    with pytest.raises(InvalidInput, match="QUESTION is missing or empty"):
        client.answer([good], [""])
    with pytest.raises(TypeError, match="bare str"):
        client.match([good], "a cat")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="TEXT item 0: text is not valid UTF-8"):
        pair = {
            "IMAGE": np.array([[good]], dtype=object),
            "TEXT": np.array([[b"\xff"]], dtype=object),
        }
        client.infer("blip_itm", pair)
    # The server keeps serving.
    assert client.caption([good], max_new_tokens=3)[0]
