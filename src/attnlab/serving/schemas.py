"""What `POST /predict` (and `/stream`) accept, one pydantic model per family: FastAPI validates a request in the
HTTP process before it reaches a model, so a bad input answers 422 with what is wrong and never fails the other
requests of its batch.

Every body is `{"input": <one>}` or `{"inputs": [<one>, ...]}`, plus the family's options:
    text classification   a non-empty string
    image classification  pixel values 0-255 as nested lists ((H, W) or (C, H, W), the run's image size), or a
                          base64 PNG of that size
    language model        a prompt; max_new_tokens, temperature, top_k, top_p, seed
    translation           a sentence; beam_size
    summarisation         a document; num_beams, max_new_tokens

`LIMITS` holds the server's bounds (text length, inputs a request, new tokens, beams, the image size); the server
sets it before its HTTP workers start (they fork from that process and read it there).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


@dataclass
class Limits:
    max_text_chars: int = 100_000  # a longer text is refused (413-sized reviews are not what a model reads anyway)
    max_inputs: int = 64  # inputs in one request
    max_new_tokens: int = 512
    max_beams: int = 10
    channels: int = 1
    image_size: int = 28
    max_png_bytes: int = 1_000_000


LIMITS = Limits()


def check_text(text: str, what: str = "input") -> str:
    """A text a tokenizer can read: non-empty, at most max_text_chars characters, encodable as UTF-8."""
    if not text.strip():
        raise ValueError(f"{what} is empty")
    if len(text) > LIMITS.max_text_chars:
        raise ValueError(f"{what} has {len(text):,} characters; the limit is {LIMITS.max_text_chars:,} (serve.max_text_chars)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate (\ud800) in the JSON string
        raise ValueError(f"{what} is not valid Unicode text: {err.reason} at character {err.start}") from None
    return text


class _Batchable(BaseModel):
    """`input` (one item) or `inputs` (a list of items), never both."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _one_of(self) -> _Batchable:
        has_one, has_many = self.input is not None, self.inputs is not None
        if has_one == has_many:
            raise ValueError('give exactly one of "input" (one item) or "inputs" (a list of items)')
        if has_many and not 1 <= len(self.inputs) <= LIMITS.max_inputs:
            raise ValueError(f'"inputs" holds {len(self.inputs)} items; give 1 to {LIMITS.max_inputs} (serve.max_inputs)')
        return self

    def items(self) -> list[Any]:
        return [self.input] if self.input is not None else list(self.inputs)

    def options(self) -> dict[str, Any]:
        """The request's settings other than its inputs (sampling, beams)."""
        return self.model_dump(exclude={"input", "inputs"})


class _TextInputs(_Batchable):
    input: str | None = None
    inputs: list[str] | None = None

    @field_validator("input")
    @classmethod
    def _one_text(cls, v: str | None) -> str | None:
        return None if v is None else check_text(v)

    @field_validator("inputs")
    @classmethod
    def _texts(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [check_text(t, f"inputs[{i}]") for i, t in enumerate(v)]


class TextRequest(_TextInputs):
    """Text classification: review(s) -> label and probabilities. Texts longer than the run's max_len tokens are cut
    as in training (truncation head or head_tail, data.truncation)."""


class GenerateRequest(_TextInputs):
    """Language model: prompt(s) -> sampled continuation(s). temperature 0 is greedy; the same seed gives the same text."""

    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.8, ge=0.0, le=10.0)
    top_k: int | None = Field(50, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, lt=2**63)

    @field_validator("max_new_tokens")
    @classmethod
    def _bounded(cls, v: int) -> int:
        if v > LIMITS.max_new_tokens:
            raise ValueError(f"max_new_tokens={v} is over this server's limit of {LIMITS.max_new_tokens} (serve.max_new_tokens)")
        return v


class StreamRequest(GenerateRequest):
    """`POST /stream`: one prompt, its continuation as server-sent events."""

    @model_validator(mode="after")
    def _single(self) -> StreamRequest:
        if self.inputs is not None:
            raise ValueError('/stream continues one prompt: send {"input": "<prompt>"}')
        return self


class TranslateRequest(_TextInputs):
    """Translation: sentence(s) -> translation(s); beam_size 1 is greedy. A source over the model's length is cut."""

    beam_size: int = Field(5, ge=1)

    @field_validator("beam_size")
    @classmethod
    def _beams(cls, v: int) -> int:
        if v > LIMITS.max_beams:
            raise ValueError(f"beam_size={v} is over this server's limit of {LIMITS.max_beams} (serve.max_beams)")
        return v


class SummarizeRequest(_TextInputs):
    """Summarisation: document(s) -> summary(ies); a document is cut to the run's prompt length as in training."""

    num_beams: int = Field(4, ge=1)
    max_new_tokens: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> SummarizeRequest:
        if self.num_beams > LIMITS.max_beams or self.max_new_tokens > LIMITS.max_new_tokens:
            raise ValueError(f"num_beams <= {LIMITS.max_beams} and max_new_tokens <= {LIMITS.max_new_tokens} on this server")
        return self


def check_image(value: Any, what: str = "input") -> np.ndarray:
    """Pixels 0-255 as nested lists or a base64 PNG -> uint8 (C, H, W) of the run's size."""
    size, channels = LIMITS.image_size, LIMITS.channels
    if isinstance(value, str):
        return _png(value, what)
    try:
        pixels = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: pixel rows must all have the same length ({size}x{size} numbers)") from None
    if pixels.shape == (size, size) and channels == 1:
        pixels = pixels[None]
    if pixels.shape != (channels, size, size):
        want = f"({size}, {size})" + (f" or (1, {size}, {size})" if channels == 1 else f" -> ({channels}, {size}, {size})")
        raise ValueError(f"{what}: an image of shape {want} is expected, got {pixels.shape}")
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{what}: pixel values must be numbers from 0 to 255 (8-bit), got {pixels.min()} to {pixels.max()}")
    return np.rint(pixels).astype(np.uint8)


def _png(value: str, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    size, channels = LIMITS.image_size, LIMITS.channels
    try:
        raw = base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: a string must be a base64-encoded PNG") from None
    if len(raw) > LIMITS.max_png_bytes:
        raise ValueError(f"{what}: the PNG has {len(raw):,} bytes; the limit is {LIMITS.max_png_bytes:,}")
    try:
        image = Image.open(io.BytesIO(raw))
        if image.format != "PNG":
            raise ValueError(f"{what}: a {image.format} image; send a PNG")
        image = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{what}: not a readable PNG image") from None
    if image.size != (size, size):
        raise ValueError(f"{what}: the PNG is {image.size[0]}x{image.size[1]}; this model reads {size}x{size} images")
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


class ImageRequest(_Batchable):
    """Image classification: image(s) -> label and probabilities."""

    input: list | str | None = None
    inputs: list[list | str] | None = None

    @field_validator("input")
    @classmethod
    def _one_image(cls, v: Any) -> Any:
        if v is not None:
            check_image(v)
        return v

    @field_validator("inputs")
    @classmethod
    def _images(cls, v: list | None) -> list | None:
        if v is not None:
            for i, image in enumerate(v):
                check_image(image, f"inputs[{i}]")
        return v
