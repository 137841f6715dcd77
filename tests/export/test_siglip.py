"""SigLIP and SigLIP 2 (FixRes): the export against Hugging Face, the served tokenization
(SigLIP's SentencePiece pipeline, SigLIP 2's tokenizer.json) and image pre-processing equal to
the checkpoint's processor, and the padding trap: texts padded to 64, not to the longest."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlpserve.export import ExportOptions, ExportReport, export, hf
from vlpserve.export.siglip_checkpoints import build_siglip
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.model_repository.runtime.text import TextTokenizer
from vlpserve.ort import session

TEXTS = [
    "a photo of a cat",
    "A Photo Of A CAT!!!",
    "",
    "   ",
    "hello, world... (and) [more] {punctuation}; 'quotes' \"double\" - dash_under",
    "naïve café ☕ déjà-vu — 東京 🚀",
    "tabs\tand\nnewlines  and   spaces",
    "end of text </s> in the middle",
    "</s> at the start",
    "ends with it </s>",
    "an <unk> token and ▁ the piece marker",
    "word " * 100,  # longer than 64 tokens: truncated, end-of-text kept
]


@pytest.fixture(scope="module", params=[1, 2], ids=["siglip", "siglip2"])
def siglip(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny seeded checkpoint and its export."""
    folder = tmp_path_factory.mktemp(f"siglip{request.param}")
    checkpoint = build_siglip(folder / "checkpoint", version=request.param)
    export("siglip", ExportOptions(model=str(checkpoint), out=folder / "export"))
    return checkpoint, folder / "export"


def _reference(checkpoint: Path):
    from transformers import AutoTokenizer, SiglipModel

    return (
        SiglipModel.from_pretrained(checkpoint).eval(),
        AutoTokenizer.from_pretrained(checkpoint),
        hf.image_processor(checkpoint),
    )


def test_report_and_graphs(siglip) -> None:
    _, out = siglip
    report = ExportReport.read(out)
    assert report.family == "siglip" and report.text_padding == "max_length"
    assert report.max_text_length == 64 and report.logit_bias == pytest.approx(-1.5)
    assert report.logit_scale == pytest.approx(np.exp(2.3), rel=1e-5)
    for graph in report.graphs.values():
        assert graph.worst_cosine >= 0.9999
    text = report.graphs["text_encoder"]
    assert [i["name"] for i in text.inputs] == ["input_ids", "attention_mask"]


def test_tokenizer_equals_the_checkpoint_s(siglip) -> None:
    checkpoint, out = siglip
    _, tokenizer, _ = _reference(checkpoint)
    report = ExportReport.read(out)
    ours = TextTokenizer.of(out / "tokenizer", **report.tokenizer_options())
    ids, mask = ours.encode(TEXTS)
    theirs = tokenizer(TEXTS, padding="max_length", max_length=64, truncation=True)
    for row, text in enumerate(TEXTS):
        assert ids[row].tolist() == theirs["input_ids"][row], text
        assert mask[row].tolist() == theirs["attention_mask"][row], text
    assert ids.shape == (len(TEXTS), 64)


def test_left_padding_as_the_checkpoint_says(tmp_path: Path) -> None:
    """A SigLIP 2 tokenizer configured to pad on the left: the served ids follow it."""
    from transformers import AutoTokenizer

    checkpoint = build_siglip(tmp_path / "left", version=2, padding_side="left")
    export("siglip", ExportOptions(model=str(checkpoint), out=tmp_path / "export"))
    report = ExportReport.read(tmp_path / "export")
    assert report.padding_side == "left"
    ours = TextTokenizer.of(tmp_path / "export" / "tokenizer", **report.tokenizer_options())
    theirs = AutoTokenizer.from_pretrained(checkpoint)(
        TEXTS, padding="max_length", max_length=64, truncation=True
    )
    ids, mask = ours.encode(TEXTS)
    assert ids.tolist() == theirs["input_ids"] and mask.tolist() == theirs["attention_mask"]


def test_pixels_equal_the_processor_s(siglip, photos) -> None:
    """Resized to a square, no crop, with the config's filter (bilinear) and normalisation."""
    checkpoint, out = siglip
    _, _, processor = _reference(checkpoint)
    steps = ImagePreprocessing.from_file(out / "preprocessor" / "preprocessor_config.json")
    assert steps.crop is None and steps.resize_to == (224, 224) and steps.resample == 2
    cat = Image.open(io.BytesIO(photos["chelsea.png"])).convert("RGB")
    images = {name: Image.open(io.BytesIO(data)).convert("RGB") for name, data in photos.items()}
    images |= {f"{w}x{h}": cat.resize((w, h)) for w, h in ((31, 240), (9, 12), (1600, 1066))}
    for name, image in images.items():
        theirs = processor(images=image, return_tensors="np")["pixel_values"][0]
        np.testing.assert_array_equal(steps(image), theirs, err_msg=name)


def test_texts_must_be_padded_to_64(siglip) -> None:
    """The trap: padded to the longest of a batch instead, the graph's embeddings move away
    from the checkpoint's (its pooled position is then a text token, not a padding one)."""
    import torch

    checkpoint, out = siglip
    model, tokenizer, _ = _reference(checkpoint)
    texts = ["a photo of a cat", "a rocket", "two dogs in the snow"]
    batch = tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt")
    with torch.no_grad():
        expected = hf.features(
            model.get_text_features(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )
        )
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    report = ExportReport.read(out)
    graph = session(out / report.graphs["text_encoder"].path)
    options = report.tokenizer_options()
    for pad_to, agrees in ((options["pad_to"], True), (0, False)):
        ids, mask = TextTokenizer.of(out / "tokenizer", **(options | {"pad_to": pad_to})).encode(
            texts
        )
        (got,) = graph.run(None, {"input_ids": ids, "attention_mask": mask})
        cosines = np.sum(got * expected, axis=1)
        assert bool(cosines.min() >= 0.9999) == agrees, (pad_to, cosines)


@pytest.mark.parametrize(
    ("precision", "target", "floor"),
    [("int8", "onnxruntime", 0.99), ("fp16", "onnxruntime", 0.999), ("fp16", "tensorrt", 0.999)],
)
def test_precisions_and_tensorrt(
    siglip, precision: str, target: str, floor: float, tmp_path: Path
) -> None:
    """int8 (ONNX Runtime's CPU variant), fp16, and fp16 for TensorRT (standard operators,
    int32 ids, a profile up to 64 tokens) pass their gates against PyTorch fp32."""
    from vlpserve.export.tensorrt import lint

    checkpoint, _ = siglip
    report = export(
        "siglip",
        ExportOptions(model=str(checkpoint), out=tmp_path, precision=precision, target=target),
    )
    for graph in report.graphs.values():
        assert graph.worst_cosine >= floor, graph.parity
    if target == "tensorrt":
        assert report.ids_dtype == "int32"
        text = report.graphs["text_encoder"]
        assert lint(tmp_path / text.path) == [] and text.profile["input_ids"]["max"][1] == 64
        assert lint(tmp_path / report.graphs["image_encoder"].path) == []
