"""Nemotron-3 Ultra image parts (``nemotron3_ultra*``): the ``<img>`` layout, ``<image N>`` labels, the image
processor option and its errors. Equality with tinker-cookbook is in
``tests/conformance/test_nemotron3_ultra_images_cookbook.py``."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow.chat import ImagePart, Message, TextPart, ThinkingPart
from tinkerflow.render import RenderError, build_generation_prompt, build_supervised_example, get_renderer
from tinkerflow.render._images import image_token_counter
from tinkerflow.shell.io.tokenizers import offline_tokenizer


class Patches:
    """A Hugging Face style processor: 16-pixel patches, merged 2x2."""

    merge_size = 2
    patch_size = 16

    def get_number_of_image_patches(self, height: int, width: int, images_kwargs: object = None) -> int:
        return max(2, -(-height // 16) // 2 * 2) * max(2, -(-width // 16) // 2 * 2)


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _renderer(name: str = "nemotron3_ultra", **options: object):  # type: ignore[no-untyped-def]
    return get_renderer(name, offline_tokenizer("qwen3"), **options)


def _texts(renderer, model_input) -> list[str]:  # type: ignore[no-untyped-def]
    return [renderer.tokenizer.decode(chunk.tokens_T) for chunk in model_input.chunks if hasattr(chunk, "tokens_T")]


def test_labels_wrappers_and_newlines() -> None:
    renderer = _renderer(image_processor=Patches())
    image = ImagePart(_png(64, 32))
    chat = (
        Message(role="user", content=(TextPart("see"), image, TextPart("and\n"), image, image)),
        Message(role="assistant", content="ok"),
    )
    example = build_supervised_example(renderer, chat)
    texts = _texts(renderer, example.model_input)
    assert texts[0].endswith("user\nsee\n<image 1><img>")
    assert texts[1] == "</img>and\n<image 2><img>"  # no newline after text that ends with one
    assert texts[2] == "</img><image 3><img>"  # nor right after an image
    assert texts[3].startswith("</img><|im_end|>")
    sizes = [chunk.expected_tokens for chunk in example.model_input.chunks if not hasattr(chunk, "tokens_T")]
    assert sizes == [Patches().get_number_of_image_patches(32, 64) // 4] * 3
    single = build_generation_prompt(renderer, (Message(role="user", content=(image, TextPart("what?"))),))
    assert _texts(renderer, single)[0].endswith("user\n<img>")  # one image: no label, nothing before it


def test_reasoning_block_before_an_image() -> None:
    """Ultra's block ends with ``</think>``, so an image after it starts on a new line."""
    renderer = _renderer(image_processor=lambda width, height: 5)
    chat = (
        Message(role="user", content="q"),
        Message(role="assistant", content=(ThinkingPart("t"), ImagePart(_png(20, 20)), TextPart("a"))),
    )
    texts = _texts(renderer, build_supervised_example(renderer, chat).model_input)
    assert texts[0].endswith("<think>\nt</think>\n<img>")


def test_images_need_an_image_processor() -> None:
    chat = (Message(role="user", content=(TextPart("x"), ImagePart(_png(8, 8)))),)
    with pytest.raises(RenderError, match=r"messages\[0\]\.content\[1\].*image_processor="):
        build_generation_prompt(_renderer(), chat)
    with pytest.raises(RenderError, match="image_processor"):
        _renderer(image_processor=3)
    with pytest.raises(RenderError, match="at least one position"):
        build_generation_prompt(_renderer(image_processor=lambda width, height: 0), chat)
    with pytest.raises(RenderError, match="renders text only"):  # Nano / Super stay text-only
        build_generation_prompt(_renderer("nemotron3"), chat)


def test_processor_and_function_give_the_same_sizes() -> None:
    processor = Patches()
    counter = image_token_counter(processor)
    assert counter is not None
    renderers = [
        _renderer(image_processor=option)
        for option in (processor, lambda w, h: processor.get_number_of_image_patches(h, w) // 4)
    ]

    @settings(max_examples=15, deadline=None, derandomize=True, database=None)
    @given(st.integers(8, 300), st.integers(8, 300))
    def check(width: int, height: int) -> None:
        expected = processor.get_number_of_image_patches(height, width) // 4
        assert counter(width, height) == expected
        chat = (Message(role="user", content=(ImagePart(_png(width, height)), TextPart("q"))),)
        for renderer in renderers:
            chunks = build_generation_prompt(renderer, chat).chunks
            assert [c.expected_tokens for c in chunks if not hasattr(c, "tokens_T")] == [expected]

    check()


def test_image_token_counter_sources() -> None:
    assert image_token_counter(None) is None
    assert image_token_counter("no") is None
    assert image_token_counter(lambda w, h: w * h)(3, 4) == 12  # type: ignore[misc]
