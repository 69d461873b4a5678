"""tinkerflow: typed functional pipelines for LLM post-training on the Tinker API.

``import tinkerflow`` is light: it loads numpy, attrs, cattrs, jaxtyping and beartype, never torch, transformers or
the ``tinker`` client. Those load lazily in the modules that need them (``tinkerflow.interop``, the backends).
"""

from tinkerflow.chat import (
    Conversation,
    ImagePart,
    Message,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolSpec,
    UnparsedToolCall,
)
from tinkerflow.datum import Datum
from tinkerflow.errors import TinkerflowError, ValidationError
from tinkerflow.model_input import ImageChunk, ModelInput, TokenChunk
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams
from tinkerflow.training import AdamParams, ForwardBackwardOutput, LossFnOutput

__version__ = "0.1.0"

__all__ = [
    "AdamParams",
    "Conversation",
    "Datum",
    "ForwardBackwardOutput",
    "ImageChunk",
    "ImagePart",
    "LossFnOutput",
    "Message",
    "ModelInput",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
    "TextPart",
    "ThinkingPart",
    "TinkerflowError",
    "TokenChunk",
    "ToolCall",
    "ToolSpec",
    "UnparsedToolCall",
    "ValidationError",
    "__version__",
]
