"""The request bodies of the inference routes: OpenAI's fields, each bounded; anything else is
refused by name (400, orchestrator.api.errors), never ignored."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

MAX_STOPS = 4
MAX_CHOICES = 8
MAX_INPUTS = 256
MAX_MESSAGES = 1024


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(Body):
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class StreamOptions(Body):
    include_usage: StrictBool = False


class Decoding(Body):
    model: StrictStr = Field(min_length=1, max_length=500)
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**63 - 1)
    n: StrictInt = Field(1, ge=1, le=MAX_CHOICES)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = Field(None, max_length=256)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatRequest(Decoding):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)


class CompletionRequest(Decoding):
    prompt: StrictStr


class ClassifyRequest(Body):
    model: StrictStr = Field(min_length=1, max_length=500)
    input: StrictStr | list[StrictStr]
    user: StrictStr | None = Field(None, max_length=256)
