"""Tools (``tinkerflow.tools``): schemas from typed functions, the registry, argument checking, call execution, the
calculator. Pure: no processes (the sandbox is ``tests/test_sandbox.py``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from fractions import Fraction
from typing import Annotated, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkerflow.chat import ToolCall
from tinkerflow.errors import ConfigError
from tinkerflow.tools import (
    CALCULATOR,
    CalculatorError,
    Tool,
    ToolArgumentError,
    ToolRegistry,
    ToolResult,
    UnknownToolError,
    check_arguments,
    evaluate,
    parameters_schema,
    parse_docstring,
    run_call,
    tool,
)
from tinkerflow.tools.calculator import format_number


def run(call: ToolCall, registry: ToolRegistry) -> tuple[str, str | None]:
    outcome = asyncio.run(run_call(registry, call))
    return outcome.content, outcome.error


def search(
    query: str,
    limit: int = 5,
    mode: Literal["fast", "exact"] = "fast",
    tags: list[str] | None = None,
    weight: Annotated[float, "how much it counts"] = 1.0,
    strict: bool = False,
) -> str:
    """Search the notes.

    Looks through every note.

    Args:
        query: the words to look for,
            over two lines.
        limit (int): how many results.
        tags: only notes with these tags.

    Returns:
        the matches.
    """
    return f"{query}:{limit}:{mode}:{tags}:{weight}:{strict}"


def test_schema_from_google_docstring_golden() -> None:
    assert parameters_schema(search) == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "the words to look for, over two lines."},
            "limit": {"type": "integer", "description": "how many results.", "default": 5},
            "mode": {"type": "string", "enum": ["fast", "exact"], "default": "fast"},
            "tags": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "description": "only notes with these tags.",
                "default": None,
            },
            "weight": {"type": "number", "description": "how much it counts", "default": 1.0},
            "strict": {"type": "boolean", "default": False},
        },
        "required": ["query"],
    }
    made = tool(search)
    assert made.name == "search"
    assert made.description == "Search the notes.\n\nLooks through every note."
    assert made.spec().parameters_dict() == parameters_schema(search)


def test_schema_from_numpy_docstring_and_nullable_primitive() -> None:
    def scale(x: float, factor: int | None = None, names: Sequence[str] = ()) -> float:
        """Scale a number.

        Parameters
        ----------
        x : float
            The value.
        factor : int, optional
            The factor,
            if any.

        Returns
        -------
        float
        """
        return x

    summary, described = parse_docstring(scale.__doc__)
    assert summary == "Scale a number."
    assert described == {"x": "The value.", "factor": "The factor, if any."}
    schema = parameters_schema(scale)
    assert schema["properties"] == {
        "x": {"type": "number", "description": "The value."},
        "factor": {"type": ["integer", "null"], "description": "The factor, if any.", "default": None},
        "names": {"type": "array", "items": {"type": "string"}, "default": []},
    }


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ("def f(x): return x", "x"),
        ("def f(*args: int): return 0", "args"),
        ("def f(x: object): return x", "f.x"),
        ("def f(x: int | str): return x", "f.x"),
        ("def f(x: int, /): return x", "x"),
    ],
)
def test_unsupported_signatures_are_config_errors_naming_the_parameter(source: str, field: str) -> None:
    namespace: dict[str, object] = {}
    exec(source, namespace)
    with pytest.raises(ConfigError) as caught:
        tool(namespace["f"])  # type: ignore[arg-type]  # exec'd function
    assert field in str(caught.value)


def test_registry_is_an_immutable_value() -> None:
    base = ToolRegistry.of(search)
    bigger = base.with_tool(CALCULATOR)
    assert base.names() == ("search",)
    assert bigger.names() == ("search", "calculator")
    assert [spec.name for spec in bigger.specs()] == ["search", "calculator"]
    with pytest.raises(ConfigError, match="already registered"):
        bigger.with_tool(CALCULATOR)
    assert bigger.with_tool(CALCULATOR, replace=True).names() == bigger.names()
    assert bigger.without("search").names() == ("calculator",)
    with pytest.raises(TypeError):
        bigger.tools["x"] = CALCULATOR  # type: ignore[index]  # a read-only mapping
    with pytest.raises(UnknownToolError, match="did you mean 'search'"):
        bigger.get("serch")


def test_calls_are_checked_and_errors_become_observations() -> None:
    registry = ToolRegistry.of(search)
    content, error = run(ToolCall.create("search", {"query": "x", "limit": 3.0, "tags": ["a"]}), registry)
    assert (content, error) == ("x:3:fast:['a']:1.0:False", None)
    cases = {
        "unknown_tool": (ToolCall.create("serch", {"query": "x"}), "did you mean 'search'"),
        "invalid_arguments": (ToolCall.create("search", {"query": "x", "limt": 2}), "arguments.limt"),
    }
    for kind, (call, needle) in cases.items():
        content, error = run(call, registry)
        assert error == kind
        assert needle in json.loads(content)["message"]
    missing, _ = run(ToolCall.create("search", {}), registry)
    assert "arguments.query: is missing" in json.loads(missing)["message"]
    wrong, _ = run(ToolCall.create("search", {"query": 3}), registry)
    assert "must be a string, got an integer 3" in json.loads(wrong)["message"]
    nested, _ = run(ToolCall.create("search", {"query": "q", "tags": ["a", 1]}), registry)
    assert "arguments.tags[1]: must be a string" in json.loads(nested)["message"]
    enum, _ = run(ToolCall.create("search", {"query": "q", "mode": "slow"}), registry)
    assert "'fast', 'exact'" in json.loads(enum)["message"]


def test_a_tool_that_raises_or_returns_junk_is_an_observation_not_a_crash() -> None:
    def boom(x: int) -> str:
        """Fail."""
        raise RuntimeError(f"bad {x}")

    def junk() -> object:
        """Junk."""
        return object()

    async def stop(reason: str) -> ToolResult:
        """Stop the episode."""
        await asyncio.sleep(0)
        return ToolResult(f"stopped: {reason}", done=True, metrics={"stops": 1})

    registry = ToolRegistry.of(boom, junk, stop)
    content, error = run(ToolCall.create("boom", {"x": 2}), registry)
    assert error == "execution_failed"
    assert json.loads(content) == {"error": "execution_failed", "message": "RuntimeError: bad 2"}
    assert run(ToolCall.create("junk", {}), registry)[1] == "bad_result"
    outcome = asyncio.run(run_call(registry, ToolCall.create("stop", {"reason": "ok"}, id="c1")))
    assert (outcome.content, outcome.done, dict(outcome.metrics)) == ("stopped: ok", True, {"stops": 1.0})
    message = outcome.message("fallback")
    assert (message.role, message.tool_call_id, message.name) == ("tool", "c1", "stop")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-5, 5, allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@given(st.dictionaries(st.sampled_from(["query", "limit", "mode", "tags", "weight", "strict", "other"]), _JSON))
def test_checked_arguments_always_call_the_function_or_name_the_problem(arguments: dict[str, object]) -> None:
    """Property: for any JSON arguments, either the check passes and the function accepts them, or it raises a
    ToolArgumentError naming ``search.arguments.<name>`` -- never anything else."""
    schema = parameters_schema(search)
    try:
        checked = check_arguments("search", schema, arguments)
    except ToolArgumentError as error:
        assert error.where == "search"
        assert error.field.startswith("arguments.")
        assert error.field.split(".")[1].split("[")[0] in arguments or "missing" in error.problem
        return
    assert isinstance(search(**checked), str)  # type: ignore[arg-type]  # checked against the schema


def test_calculator_is_exact_and_bounded() -> None:
    assert CALCULATOR.spec().parameters_dict()["required"] == ["expression"]
    assert evaluate("7/2 + 2**10") == Fraction(2055, 2)
    assert format_number(evaluate("0.1 + 0.2")) == "0.3"
    assert format_number(evaluate("1/3")) == "0.3333333333"
    assert format_number(evaluate("sqrt(144) + abs(-2) + max(1, 5) + round(2.6)")) == "22"
    assert format_number(evaluate("2^10")) == "1024"
    for bad in ("9**9**9", "10**101", "__import__('os')", "x + 1", "1/0", "", "open('f')", "(1).real", "1" * 600):
        with pytest.raises(CalculatorError):
            evaluate(bad)


@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6), st.sampled_from(["+", "-", "*"]))
def test_calculator_matches_python_on_integers(a: int, b: int, op: str) -> None:
    assert evaluate(f"{a} {op} ({b})") == eval(f"{a} {op} ({b})")  # integers only


def test_tool_record_validates_itself() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        Tool.from_function(search, timeout_s=0)
    with pytest.raises(ConfigError, match="callable"):
        Tool(name="x", description="", parameters={"type": "object"}, function="not a function")  # type: ignore[arg-type]
