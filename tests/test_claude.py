"""Tests for the Claude Code stream-json reader (mlx_stream_tts/claude.py).

The fixtures are real CLI captures (see tests/fixtures/stream-json/SOURCES.md for their sources,
licences and what a listener should hear); the other cases are hand-made lines shaped like them.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import pytest

from mlx_stream_tts.claude import (
    CUE_INTERRUPTED,
    CUE_NO_RESULT,
    ErrorText,
    StreamJsonReader,
    error_message,
    is_error_text,
    looks_like_stream_json,
    parse_stream_json,
)

FIXTURES = Path(__file__).parent / "fixtures" / "stream-json"

# What a listener should hear, per SOURCES.md (05, 13: the exact block texts of the capture).
EXPECTED = {
    "01_plain_text_ok": "ok",
    "04_partial_haiku_text_deltas": (
        "\n\nSilent print statement\nreveals the hidden truth now—\noff by one, again"
    ),
    "05_thinking_three_bash_tools": (
        "Here are three ways to reverse a string in Python:\n\n"
        "**1. Slicing (`[::-1]`)**\n\nThe most Pythonic and concise approach.\n\n"
        "**2. `reversed()` + `join()`**\n\nUses the built-in `reversed()` iterator.\n\n"
        "**3. Loop accumulation**\n\nManual reversal by iterating in reverse.\n\n"
        "Let me test each one:"
        "\n\n"
        "All three pass. Summary:\n\n"
        "| # | Method | Code | Notes |\n"
        "|---|--------|------|-------|\n"
        "| 1 | **Slicing** | `s[::-1]` | Fastest, most idiomatic |\n"
        "| 2 | **`reversed()` + `join()`** | `''.join(reversed(s))` | Readable, lazy iterator |\n"
        "| 3 | **Loop accumulation** | prepend each char | Manual, least efficient "
        "(O(n²) due to string concat) |\n\n"
        "For production code, `s[::-1]` is the standard choice."
    ),
    "07_partial_hello_minimal": "hello",
    "08_partial_tool_input_json_delta": "Listed contents of the working directory.",
    "12_parallel_tool_calls": "Done.",
    "13_subagent_multi_result": (
        "Subagent launched successfully. It will run `echo subagent-ran` in the background and "
        "I'll receive a notification when it completes.\n\nDone."
        "\n\n"
        "The subagent completed successfully. The output of running `echo subagent-ran` is:"
        "\n\n```\nsubagent-ran\n```"
    ),
}
# A phrase from each fixture that must be heard exactly once (not again from `assistant` or result).
ONCE = {
    "01_plain_text_ok": "ok",
    "04_partial_haiku_text_deltas": "off by one, again",
    "05_thinking_three_bash_tools": "standard choice",
    "07_partial_hello_minimal": "hello",
    "08_partial_tool_input_json_delta": "Listed contents",
    "12_parallel_tool_calls": "Done.",
    "13_subagent_multi_result": "The subagent completed successfully",
}
# Real error captures (20-22, in errors/): the CLI's own message, cleaned for the ear, heard once and marked.
ERROR_EXPECTED = {
    "20_synthetic_not_logged_in": "Not logged in. Please run /login.",
    "21_synthetic_api_error_500_twice": "API Error 500: Internal server error.",
    "22_synthetic_invalid_model": (
        "There's an issue with the selected model (claude-opus-4-6-20260101). It may not exist or you may "
        "not have access to it. Run --model to pick a different model."
    ),
}
PARTIAL = ["04_partial_haiku_text_deltas", "07_partial_hello_minimal", "08_partial_tool_input_json_delta"]


def collapse(text: str) -> str:
    return " ".join(text.split())


def fixture_bytes(name: str) -> bytes:
    folder = FIXTURES / "errors" if name in ERROR_EXPECTED else FIXTURES
    return (folder / f"{name}.jsonl").read_bytes()


def run_lines(lines, tools: bool = False) -> str:
    return "".join(parse_stream_json(lines, tools=tools))


def run_bytes(data: bytes, chunk: int, tools: bool = False) -> str:
    reader = StreamJsonReader(tools=tools)
    out = []
    for i in range(0, len(data), chunk):
        out += reader.feed(data[i : i + chunk])
    out += reader.finish()
    return "".join(out)


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


# ------------------------------------------------------------------------- hand-made line shapes

MAIN = {"parent_tool_use_id": None, "session_id": "s"}


def init() -> str:
    return dumps({"type": "system", "subtype": "init", "session_id": "s", "model": "m"})


def assistant(*blocks, mid: str = "msg_1", parent: str | None = None, **extra) -> str:
    message = {"id": mid, "model": "claude-x", "role": "assistant", "content": list(blocks)}
    return dumps({"type": "assistant", "message": message, "parent_tool_use_id": parent, **extra})


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def tool(name: str, tool_input: dict, tid: str = "toolu_1") -> dict:
    return {"type": "tool_use", "id": tid, "name": name, "input": tool_input}


def event(ev: dict, parent: str | None = None) -> str:
    return dumps({"type": "stream_event", "event": ev, "parent_tool_use_id": parent, "session_id": "s"})


def msg_start(mid: str, parent: str | None = None) -> str:
    return event({"type": "message_start", "message": {"id": mid, "content": []}}, parent)


def block_start(index: int, kind: str = "text", parent: str | None = None, **fields) -> str:
    block = {"type": kind, **({"text": ""} if kind == "text" else {}), **fields}
    return event({"type": "content_block_start", "index": index, "content_block": block}, parent)


def delta(index: int, t: str, parent: str | None = None) -> str:
    d = {"type": "text_delta", "text": t}
    return event({"type": "content_block_delta", "index": index, "delta": d}, parent)


def json_delta(index: int, part: str) -> str:
    d = {"type": "input_json_delta", "partial_json": part}
    return event({"type": "content_block_delta", "index": index, "delta": d})


def block_stop(index: int, parent: str | None = None) -> str:
    return event({"type": "content_block_stop", "index": index}, parent)


def result(res: str | None = "x", **fields) -> str:
    obj = {"type": "result", "subtype": "success", "is_error": False, "result": res}
    obj.update(fields)
    if res is None:
        del obj["result"]
    return dumps(obj)


def streamed_turn(mid: str, words: list[str], final: str | None = None) -> list[str]:
    """A partial-messages turn: deltas, then the `assistant` copy before the stop, then a result."""
    full = "".join(words)
    return [
        msg_start(mid),
        block_start(0),
        *[delta(0, w) for w in words],
        assistant(text(full), mid=mid),
        block_stop(0),
        event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        event({"type": "message_stop"}),
        result(full if final is None else final),
    ]


# ------------------------------------------------------------------------------------ fixtures


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_heard_once(name):
    out = run_lines(fixture_bytes(name).splitlines(keepends=True))
    assert collapse(out) == collapse(EXPECTED[name])
    assert out.count(ONCE[name]) == 1
    assert "Claude Code error" not in out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_byte_by_byte_equals_line_by_line(name):
    data = fixture_bytes(name)
    by_line = run_lines(data.splitlines(keepends=True))
    assert run_bytes(data, chunk=1) == by_line
    assert run_bytes(data, chunk=4093) == by_line
    # Lines given as text instead of bytes: same result.
    assert run_lines(data.decode("utf-8").splitlines()) == by_line


@pytest.mark.parametrize("name", PARTIAL)
def test_partial_fixture_without_stream_events_gives_same_text(name):
    lines = fixture_bytes(name).splitlines()
    plain = [line for line in lines if json.loads(line)["type"] != "stream_event"]
    assert len(plain) < len(lines)
    assert collapse(run_lines(plain)) == collapse(EXPECTED[name])
    assert collapse(run_lines(plain)) == collapse(run_lines(lines))


def test_text_inside_a_block_is_not_altered():
    out = run_lines(fixture_bytes("04_partial_haiku_text_deltas").splitlines())
    assert out == EXPECTED["04_partial_haiku_text_deltas"] + "\n\n"
    out = run_lines(fixture_bytes("05_thinking_three_bash_tools").splitlines())
    assert out == EXPECTED["05_thinking_three_bash_tools"] + "\n\n"


def test_thinking_and_tool_output_not_heard():
    out = run_lines(fixture_bytes("05_thinking_three_bash_tools").splitlines())
    assert "The user wants" not in out  # the thinking block
    assert "✓" not in out and "dlrow olleh" not in out  # tool output
    out = run_lines(fixture_bytes("08_partial_tool_input_json_delta").splitlines())
    assert "drwx" not in out and "ls -la" not in out


def test_subagent_text_excluded():
    out = run_lines(fixture_bytes("13_subagent_multi_result").splitlines(), tools=True)
    assert "The command executed successfully" not in out
    assert "Echo test message" not in out and "echo subagent-ran." not in out  # sub-agent's Bash
    assert out.count("Subagent launched successfully") == 1


def test_tool_summaries_on_fixtures():
    out = run_lines(fixture_bytes("05_thinking_three_bash_tools").splitlines(), tools=True)
    # Multi-line python scripts are named by their description.
    assert collapse(out) == collapse(
        EXPECTED["05_thinking_three_bash_tools"].replace(
            "Let me test each one:",
            "Let me test each one:\n\nRunning Bash: Test string reversal via slicing.\n\n"
            "Running Bash: Test string reversal via reversed() + join().\n\n"
            "Running Bash: Test string reversal via loop accumulation.",
        )
    )
    out = run_lines(fixture_bytes("08_partial_tool_input_json_delta").splitlines(), tools=True)
    assert out == "Running Bash: ls -la.\n\nListed contents of the working directory.\n\n"
    out = run_lines(fixture_bytes("12_parallel_tool_calls").splitlines(), tools=True)
    assert out == "Running Bash: echo one.\n\nRunning Bash: echo two.\n\nDone.\n\n"


def test_tool_summary_from_streamed_input_at_block_stop():
    # Fixture 08 without its `assistant` tool_use line: the summary must come from the
    # input_json_delta fragments once the block stops, exactly once.
    lines = fixture_bytes("08_partial_tool_input_json_delta").splitlines()
    kept = []
    for line in lines:
        obj = json.loads(line)
        content = obj.get("message", {}).get("content") if obj["type"] == "assistant" else None
        if content and content[0]["type"] == "tool_use":
            continue
        kept.append(line)
    assert len(kept) == len(lines) - 1
    reader = StreamJsonReader(tools=True)
    heard = []
    for line in kept:
        piece = "".join(reader.feed_line(line))
        if "Running" in piece:
            heard.append((json.loads(line)["event"]["type"], piece))
    assert heard == [("content_block_stop", "Running Bash: ls -la.\n\n")]


def test_tool_summary_shapes():
    lines = [
        init(),
        assistant(tool("Bash", {"command": "pytest -q"}, "t1")),
        assistant(tool("Read", {"file_path": "/home/u/project/src/main.py"}, "t2")),
        assistant(tool("Grep", {"pattern": "def feed", "path": "src"}, "t3")),
        assistant(tool("mcp__github__create_issue", {"title": "x"}, "t4")),
        assistant(tool("Bash", {"command": "a b c d e f g h i j k l"}, "t5")),
        assistant(tool("TodoWrite", {"todos": []}, "t6")),
        assistant(tool("Bash", {"command": "pytest -q"}, "t1")),  # same id again: once
        assistant(tool("Bash", {"command": "ls"}, "t7"), parent="toolu_agent"),  # sub-agent
        result("x"),
    ]
    out = run_lines(lines, tools=True)
    assert out.split("\n\n")[:-1] == [
        "Running Bash: pytest -q.",
        "Running Read: main.py.",
        "Running Grep: def feed.",
        "Running github create issue.",
        "Running Bash: a b c d e f g h.",
        "Running TodoWrite.",
        "x",  # no assistant text in this turn: the result is what there is to hear
    ]
    assert "Running" not in run_lines(lines)  # off by default


# ------------------------------------------------------------------------ duplication, ordering


def test_blocks_are_separate_paragraphs():
    out = run_lines([init(), assistant(text("One")), assistant(text("Two")), result("Two")])
    assert out == "One\n\nTwo\n\n"
    # Streamed: the paragraph break comes as soon as the block ends, before the next message.
    reader = StreamJsonReader()
    pieces = [reader.feed_line(line) for line in [msg_start("m1"), block_start(0), delta(0, "First")]]
    assert pieces[-1] == ["First"]
    assert reader.feed_line(assistant(text("First"), mid="m1")) == ["\n\n"]
    assert reader.feed_line(block_stop(0)) == []
    rest = "".join(
        p for line in [msg_start("m2"), block_start(0), delta(0, "Second"), block_stop(0)]
        for p in reader.feed_line(line)
    )
    assert rest == "Second\n\n"


def test_block_without_end_is_not_glued_to_the_next():
    # Two messages whose first block never got a stop nor an `assistant` copy.
    lines = [msg_start("m1"), block_start(0), delta(0, "cut off"), msg_start("m2"), block_start(0),
             delta(0, "next"), block_stop(0), result("next")]
    assert run_lines(lines) == "cut off\n\nnext\n\n"


def test_several_turns_repeat_short_answers():
    lines = [init(), assistant(text("ok"), mid="a"), result("ok"),
             init(), assistant(text("ok"), mid="b"), result("ok"),
             *streamed_turn("c", ["o", "k"]), *streamed_turn("d", ["ok"])]
    assert run_lines(lines) == "ok\n\n" * 4


def test_result_spoken_only_without_assistant_text():
    # No assistant line at all (e.g. a local command): the result text is heard, once.
    assert run_lines([init(), result("Total cost: 1 dollar")]) == "Total cost: 1 dollar\n\n"
    # The turn spoke: its result is never heard again, even if it differs in whitespace or form.
    assert run_lines([init(), assistant(text("A.")), assistant(text("B.")), result(" B. ")]) == (
        "A.\n\nB.\n\n"
    )
    assert run_lines([init(), assistant(text("A.")), result("something else")]) == "A.\n\n"
    # After /compact: empty result, nothing to say, no error.
    assert run_lines([init(), result("", num_turns=0)]) == ""


def test_second_result_of_background_agent_not_repeated():
    # Capture 13's shape: two blocks, then two results each repeating one of them.
    lines = [init(), assistant(text("Launched. Done."), mid="a"), assistant(text("It ran."), mid="b"),
             result("Launched. Done."), result("It ran.")]
    assert run_lines(lines) == "Launched. Done.\n\nIt ran.\n\n"


def test_assistant_copy_with_more_text_than_deltas():
    # Deltas lost in transit: only the missing tail of the `assistant` copy is said.
    lines = [msg_start("m"), block_start(0), delta(0, "Hello"), assistant(text("Hello world."), mid="m"),
             block_stop(0), result("Hello world.")]
    assert run_lines(lines) == "Hello world.\n\n"


def test_interleaved_subagent_stream_events():
    lines = [
        init(),
        msg_start("m_main"),
        block_start(0),
        delta(0, "Main one, "),
        msg_start("m_sub", parent="toolu_A"),
        block_start(0, parent="toolu_A"),
        delta(0, "SUB TEXT", parent="toolu_A"),
        delta(0, "main two."),
        assistant(text("SUB TEXT"), mid="m_sub", parent="toolu_A"),
        block_stop(0, parent="toolu_A"),
        assistant(text("Main one, main two."), mid="m_main"),
        block_stop(0),
        result("Main one, main two."),
    ]
    assert run_lines(lines) == "Main one, main two.\n\n"


def test_message_content_as_plain_string():
    assert run_lines([init(), dumps({"type": "assistant", "message": {"id": "m", "content": "Plain."},
                                     "parent_tool_use_id": None}), result("Plain.")]) == "Plain.\n\n"


def test_interrupted_turn_then_next_turn():
    lines = [
        init(),
        msg_start("m1"),
        block_start(0),
        delta(0, "I will now expl"),
        dumps({"type": "control_response", "response": {"subtype": "success", "request_id": "r"}}),
        dumps({"type": "user", "message": {"role": "user", "content": "[Request interrupted by user]"},
               **MAIN}),
        result(None, subtype="error_during_execution", is_error=True, terminal_reason="aborted_streaming",
               errors=["[ede_diagnostic] result_type=user"]),
        *streamed_turn("m2", ["Sure."]),
    ]
    out = run_lines(lines)
    assert out == f"I will now expl\n\n{CUE_INTERRUPTED}\n\nSure.\n\n"
    assert "ede_diagnostic" not in out


# --------------------------------------------------------------------------------- error cues


def synthetic(message: str | None, code: str | None = "unknown", **extra) -> str:
    """A CLI-made error line as the captures show it (model `<synthetic>`, top-level `error`)."""
    content = [text(message)] if message is not None else []
    obj = {"type": "assistant", "message": {"id": "u-u-i-d", "model": "<synthetic>", "role": "assistant",
           "content": content}, "parent_tool_use_id": None, **extra}
    if code is not None:
        obj["error"] = code
    return dumps(obj)


def pieces_of(lines, tools: bool = False) -> list[tuple[bool, str]]:
    """(is an error, text) runs, adjacent pieces of the same kind merged."""
    runs: list[tuple[bool, str]] = []
    for piece in parse_stream_json(lines, tools=tools):
        flag = is_error_text(piece)
        assert isinstance(piece, str) and (flag == isinstance(piece, ErrorText))
        if runs and runs[-1][0] == flag:
            runs[-1] = (flag, runs[-1][1] + piece)
        else:
            runs.append((flag, str(piece)))
    return runs


@pytest.mark.parametrize("name", sorted(ERROR_EXPECTED))
def test_error_capture_spoken_as_its_message_once_and_marked(name):
    runs = pieces_of(fixture_bytes(name).splitlines(keepends=True))
    assert runs == [(True, ERROR_EXPECTED[name] + "\n\n")]
    assert "Claude Code error" not in runs[0][1]  # the message, not the generic cue


def runs_of_cuts(data: bytes, cuts: list[int]) -> list[tuple[bool, str]]:
    """Feed `data` cut at `cuts`; the (is an error, text) runs of the output."""
    reader = StreamJsonReader()
    out: list[str] = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        out += reader.feed(data[start:end])
    out += reader.finish()
    runs: list[tuple[bool, str]] = []
    for piece in out:
        flag = is_error_text(piece)
        if runs and runs[-1][0] == flag:
            runs[-1] = (flag, runs[-1][1] + piece)
        else:
            runs.append((flag, str(piece)))
    return runs


@pytest.mark.parametrize("name", sorted(ERROR_EXPECTED))
def test_error_capture_split_anywhere_gives_the_same_marked_output(name):
    data = fixture_bytes(name)
    whole = pieces_of(data.splitlines(keepends=True))
    for chunk in (1, 2, 7, 64, 4093):
        assert runs_of_cuts(data, list(range(chunk, len(data), chunk))) == whole, chunk
    rng = random.Random(len(data))
    for _ in range(200):  # cut at random places, inside lines and characters too
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
        assert runs_of_cuts(data, cuts) == whole, cuts


def test_text_pieces_are_plain_and_cues_are_marked():
    assert not any(is_error_text(p) for p in parse_stream_json(fixture_bytes("05_thinking_three_bash_tools").splitlines()))
    out = list(parse_stream_json([init(), assistant(text("Half")), result(None, subtype="error_max_turns", is_error=True)]))
    assert [is_error_text(p) for p in out] == [False, True]
    assert out[1] == "Claude Code error: reached the maximum number of turns.\n\n"
    assert is_error_text(next(iter(parse_stream_json([]))))  # the stream ended without a result
    interrupted = list(parse_stream_json([init(), result(None, subtype="error_during_execution", is_error=True,
                                                        terminal_reason="aborted_streaming")]))
    assert interrupted == [f"{CUE_INTERRUPTED}\n\n"] and not is_error_text(interrupted[0])


def test_synthetic_auth_error_spoken_once():
    # Shape from a real expired-login run: a synthetic assistant line, then an is_error result.
    message = "Failed to authenticate: OAuth session expired and could not be refreshed"
    lines = [init(), synthetic(message, "authentication_failed"), result(message, is_error=True, terminal_reason="api_error")]
    assert pieces_of(lines) == [(True, message + ".\n\n")]


@pytest.mark.parametrize(
    ("message", "spoken"),
    [
        ("Invalid API key · Please run /login", "Invalid API key. Please run /login."),
        ("Please run /login · API Error: 401 OAuth access token has expired. Re-authenticate to continue.",
         "Please run /login. API Error 401: OAuth access token has expired. Re-authenticate to continue."),
        (('API Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has '
          'exceeded your rate limit"}}'), "API Error 429: Number of requests has exceeded your rate limit."),
        ('API Error: 400 {"type":"error","error":{"message":"bad"}}', "API Error 400: bad."),
        ('API Error: 500 {"type":"error","error":{"type":"api_e', "API Error 500."),  # a body cut short
        ("API Error: Unable to connect to API (ConnectionRefused)",
         "API Error: Unable to connect to API (connection refused)."),
        ("API Error: Unable to connect to API (ENOTFOUND)", "API Error: Unable to connect to API (host not found)."),
        ("API Error: Unable to connect to API (FailedToOpenSocket)",
         "API Error: Unable to connect to API (failed to open socket)."),
        (("API Error: 529 Overloaded. This is a server-side issue, usually temporary — try again in a moment. "
          "If it persists, check https://status.claude.com."),
         ("API Error 529: Overloaded. This is a server-side issue, usually temporary — try again in a moment. "
          "If it persists, check status.claude.com.")),
        ("You've hit your session limit · resets 6:40am (UTC)", "You've hit your session limit. Resets 6:40am."),
        ("Claude AI usage limit reached|1752757200", "Claude AI usage limit reached."),
        ("API Error: 400 due to tool use concurrency issues. Run /rewind to recover the conversation.",
         "API Error 400 due to tool use concurrency issues. Run /rewind to recover the conversation."),
        ("API Error: 401 authentication_error: invalid x-api-key", "API Error 401 authentication error: invalid x-api-key."),
        ("model not found", "Model not found."),
    ],
)
def test_error_message_cleaned_for_the_ear(message, spoken):
    assert error_message(message) == spoken
    assert pieces_of([init(), synthetic(message), result(message, is_error=True)]) == [(True, spoken + "\n\n")]


def test_long_error_message_cut_but_keeps_what_to_do():
    long = " ".join(f"Detail number {i} of the failure is here." for i in range(12)) + " Run /doctor to check."
    spoken = error_message(long)
    assert spoken.startswith("Detail number 0 of the failure is here.")
    assert spoken.endswith("Run /doctor to check.")
    assert "Detail number 5" not in spoken and len(spoken) <= 320
    one_sentence = "word " * 200
    assert len(error_message(one_sentence)) <= 241
    assert error_message("A. B. C. D. E. Run /login now.") == "A. B. C. Run /login now."


@pytest.mark.parametrize("text_value", [None, "", "   ", "error", "{}", '{"type":"error"}', "req_011CXmP6"])
def test_error_without_readable_text_keeps_the_cue(text_value):
    assert error_message(text_value) is None
    lines = [init(), synthetic(text_value, "authentication_failed"), result(text_value, is_error=True)]
    assert pieces_of(lines) == [(True, "Claude Code error: authentication failed.\n\n")]
    assert pieces_of([init(), synthetic(text_value, "model_not_found")]) == [
        (True, "Claude Code error: model not found.\n\n")
    ]


def test_different_errors_in_one_turn_each_spoken_same_one_once():
    lines = [init(), synthetic("API Error: Connection error."), synthetic("API Error: Connection error."),
             synthetic("Not logged in · Please run /login", "authentication_failed"), synthetic(None, "rate_limit"),
             result("Not logged in · Please run /login", is_error=True)]
    assert pieces_of(lines) == [(True, "API Error: Connection error.\n\nNot logged in. Please run /login.\n\n")]
    # The next turn's error is heard again.
    again = lines + [init(), synthetic("API Error: Connection error."), result("x", is_error=True)]
    assert pieces_of(again)[0][1].count("Connection error") == 2


def test_error_after_text_is_its_own_marked_paragraph():
    lines = [init(), msg_start("m"), block_start(0), delta(0, "Half a sent"),
             synthetic("API Error: Connection error."), result("API Error: Connection error.", is_error=True)]
    assert pieces_of(lines) == [(False, "Half a sent\n\n"), (True, "API Error: Connection error.\n\n")]


@pytest.mark.parametrize(
    ("fields", "cue"),
    [
        ({"subtype": "success", "is_error": True, "terminal_reason": "api_error", "api_error_status": 404},
         "Claude Code error: not found."),
        ({"subtype": "success", "is_error": True, "terminal_reason": "api_error"}, "Claude Code error: API error."),
        ({"subtype": "error_max_turns", "is_error": True, "terminal_reason": "max_turns",
          "errors": ["Reached maximum number of turns (10)"]},
         "Claude Code error: reached the maximum number of turns."),
        ({"subtype": "error_during_execution", "is_error": True,
          "errors": ["[ede_diagnostic] internal", "MCP server exploded"]}, "Claude Code error: MCP server exploded."),
        ({"subtype": "error_during_execution", "is_error": True, "errors": []},
         "Claude Code error: during execution."),
        ({"subtype": "error_max_budget_usd", "is_error": False}, "Claude Code error: reached the budget limit."),
    ],
)
def test_error_results_without_a_message_give_a_cue(fields, cue):
    obj = {"type": "result", **fields}
    assert pieces_of([init(), dumps(obj)]) == [(True, cue + "\n\n")]


@pytest.mark.parametrize(
    ("message", "spoken"),
    [
        ("There's an issue with the selected model (m). It may not exist or you may not have access to it.",
         "There's an issue with the selected model (m). It may not exist or you may not have access to it."),
        ("API Error: Connection error.", "API Error: Connection error."),
    ],
)
def test_error_result_alone_speaks_its_message(message, spoken):
    # A result with is_error and no synthetic line before it (older CLIs, trimmed logs).
    line = result(message, is_error=True, terminal_reason="api_error", api_error_status=404)
    assert pieces_of([init(), line]) == [(True, spoken + "\n\n")]


def test_failed_resume_only_a_result_line():
    line = dumps({"type": "result", "subtype": "error_during_execution", "is_error": True, "num_turns": 0,
                  "errors": ["No conversation found with session ID: 00000000"]})
    assert run_lines([line]) == "Claude Code error: No conversation found with session ID: 00000000.\n\n"


def test_synthetic_without_error_is_not_spoken():
    line = dumps({"type": "assistant", "message": {"id": "x", "model": "<synthetic>",
                  "content": [text("No response requested.")]}, "parent_tool_use_id": None})
    assert run_lines([init(), line, result("")]) == ""


def test_cue_is_its_own_paragraph_after_cut_text():
    lines = [init(), msg_start("m"), block_start(0), delta(0, "Half a sent"),
             result(None, subtype="success", is_error=True, terminal_reason="api_error", api_error_status=529)]
    assert pieces_of(lines) == [(False, "Half a sent\n\n"), (True, "Claude Code error: server overloaded.\n\n")]


def test_stream_without_result_ends_with_cue():
    assert run_lines([]) == CUE_NO_RESULT + "\n\n"  # empty stdout
    assert run_lines([init(), assistant(text("Partial answer."))]) == f"Partial answer.\n\n{CUE_NO_RESULT}\n\n"
    # A new turn started after the last result and never finished.
    assert run_lines([init(), assistant(text("A")), result("A"), init()]) == f"A\n\n{CUE_NO_RESULT}\n\n"
    # An error message was heard: no second cue for the missing result.
    assert pieces_of([init(), synthetic("API Error: Connection error.")]) == [(True, "API Error: Connection error.\n\n")]
    # Finished normally: no cue, and finish() is quiet the second time.
    reader = StreamJsonReader()
    reader.feed_line(init())
    reader.feed_line(result("done"))
    assert reader.finish() == []
    assert reader.finish() == []


def rate(status):
    return dumps({"type": "rate_limit_event", "rate_limit_info": {"status": status, "resetsAt": 1}})


def test_rate_limit_rejected_then_its_message():
    # The real order: the rejected event, then the CLI's message, then an is_error result.
    message = "You've hit your session limit · resets 2pm (Europe/Helsinki)"
    lines = [init(), rate("allowed"), rate("rejected"), rate("rejected"), synthetic(message, "rate_limit"),
             result(message, is_error=True)]
    assert pieces_of(lines) == [(True, "You've hit your session limit. Resets 2pm.\n\n")]
    assert run_lines([init(), rate("allowed_warning"), assistant(text("ok")), result("ok")]) == "ok\n\n"


def test_rate_limit_rejected_without_a_message_gives_the_cue_once():
    cue = "Claude Code error: rate limit reached.\n\n"
    assert pieces_of([init(), rate("rejected"), result(None, is_error=True, terminal_reason="api_error")]) == [
        (True, cue)]
    assert pieces_of([init(), rate("rejected"), synthetic(None, "rate_limit"), result(None, is_error=True)]) == [
        (True, cue)]
    # The request went on (overage): the cue comes before the answer, between paragraphs.
    lines = [init(), rate("rejected"), msg_start("m"), block_start(0), delta(0, "Par"), rate("rejected"),
             delta(0, "tial."), assistant(text("Partial."), mid="m"), block_stop(0), result("Partial.")]
    assert pieces_of(lines) == [(True, cue), (False, "Partial.\n\n")]
    # Without any other line, the end of the stream tells it.
    assert pieces_of([init(), rate("rejected")]) == [(True, cue)]


def test_error_codes_without_text_have_words():
    for code, words in [("oauth_org_not_allowed", "organization not allowed"), ("max_output_tokens", "output token limit reached"),
                        ("some_new_code", "some new code")]:
        assert run_lines([init(), synthetic(None, code), result(None, is_error=True)]) == f"Claude Code error: {words}.\n\n"


def test_error_text_is_a_str():
    piece = ErrorText("Not logged in.\n\n")
    assert piece == "Not logged in.\n\n" and piece.error is True and is_error_text(piece)
    assert not is_error_text(piece.strip()) and not is_error_text("x") and not is_error_text(None)
    assert json.dumps(piece) == json.dumps(str(piece))


# --------------------------------------------------------------------------------- robustness


def test_unknown_types_extra_keys_and_blank_lines():
    lines = [
        "",
        "   \r\n",
        init(),
        dumps({"type": "active_goal", "goal": "x"}),
        dumps({"type": "control_response", "response": {}}),
        dumps({"type": "conversation_reset"}),
        dumps({"type": "system", "subtype": "brand_new_subtype", "anything": [1, 2]}),
        dumps({"type": "assistant", "_t": 123, "wire_tool_inputs": {}, "parent_tool_use_id": None,
               "message": {"id": "m", "content": [text("Hi."), {"type": "server_tool_use", "id": "s"},
                                                  {"type": "future_block", "data": 1}],
                           "diagnostics": {"x": 1}}}),
        event({"type": "ping"}),
        result("Hi.", ttft_ms=5, new_field={"a": 1}),
        "\n",
    ]
    assert run_lines(lines) == "Hi.\n\n"


def test_garbage_binary_and_non_objects_are_skipped(caplog):
    lines = [
        init(),
        b"this is not json {{{",
        b"\x00\xff\xfe\x80binary\x9f",
        b'{"type": "assistant", "message": ',  # cut mid-object in the middle of a stream
        "[1, 2, 3]",
        "42",
        '"a string"',
        "null",
        '{"no_type": 1}',
        '{"type": 7}',
        "[" * 5000 + "]" * 5000,  # deeply nested
        assistant(text("Still here.")),
        result("Still here."),
    ]
    with caplog.at_level(logging.WARNING, logger="mlx_stream_tts.claude"):
        out = run_lines(lines)
    assert out == "Still here.\n\n"
    assert sum("skipped" in r.getMessage() for r in caplog.records) >= 9


def test_invalid_utf8_inside_a_string_is_salvaged():
    good = assistant(text("caf\u00e9 ok")).encode("utf-8")
    bad = good.replace("\u00e9".encode(), b"\xe9")  # a latin-1 byte: not UTF-8
    out = run_lines([init(), bad, result("x")])
    assert out == "caf\ufffd ok\n\n"


def test_missing_fields_and_wrong_types():
    lines = [
        init(),
        dumps({"type": "assistant"}),
        dumps({"type": "assistant", "message": "oops"}),
        dumps({"type": "assistant", "message": {"content": 5}}),
        dumps({"type": "assistant", "message": {"content": [5, None, {"type": "text"}, {"type": "text", "text": 3}]}}),
        dumps({"type": "assistant", "message": {"content": None}}),
        dumps({"type": "stream_event"}),
        dumps({"type": "stream_event", "event": [1]}),
        event({"type": "content_block_delta", "index": "zero", "delta": {"type": "text_delta", "text": 5}}),
        event({"type": "content_block_delta", "index": 0, "delta": None}),
        event({"type": "content_block_start", "index": 0, "content_block": "text"}),
        event({"type": "content_block_stop"}),
        event({"type": "message_start", "message": None}),
        dumps({"type": "rate_limit_event", "rate_limit_info": "rejected"}),
        dumps({"type": "user", "message": {"content": "a replayed prompt"}}),
        dumps({"type": "system"}),
        assistant(text("Fine.")),
        dumps({"type": "result", "result": ["not", "a", "string"], "is_error": "yes", "subtype": 3}),
    ]
    assert run_lines(lines, tools=True) == "Fine.\n\n"


def test_deltas_without_block_start_or_message_start():
    lines = [delta(0, "No start "), delta(0, "events."), block_stop(0), result("No start events.")]
    assert run_lines(lines) == "No start events.\n\n"


def test_truncated_last_line(caplog):
    data = (init() + "\n" + assistant(text("Before the cut.")) + "\n").encode()
    cut = assistant(text("Never finished"))[:40].encode()
    with caplog.at_level(logging.WARNING, logger="mlx_stream_tts.claude"):
        out = run_bytes(data + cut, chunk=7)
    assert out == f"Before the cut.\n\n{CUE_NO_RESULT}\n\n"
    assert any("truncated last line" in r.getMessage() for r in caplog.records)
    # A complete last line that only lacks its newline is not lost.
    out = run_bytes(data + result("Before the cut.").encode(), chunk=5)
    assert out == "Before the cut.\n\n"


def test_crlf_lines_and_bom():
    data = ("\ufeff" + init() + "\r\n" + assistant(text("Windows.")) + "\r\n" + result("Windows.") + "\r\n").encode()
    assert run_bytes(data, chunk=3) == "Windows.\n\n"


def test_multibyte_characters_split_across_chunks():
    data = (init() + "\n" + assistant(text("日本語のテキスト — ✓")) + "\n" + result("x") + "\n").encode()
    for chunk in (1, 2, 5):
        assert run_bytes(data, chunk) == "日本語のテキスト — ✓\n\n"


def test_handler_failure_is_logged_and_stream_goes_on(monkeypatch, caplog):
    reader = StreamJsonReader()
    calls = []

    def boom(self, obj):
        calls.append(obj)
        raise RuntimeError("boom")

    monkeypatch.setitem(StreamJsonReader._HANDLERS, "rate_limit_event", boom)
    with caplog.at_level(logging.WARNING, logger="mlx_stream_tts.claude"):
        assert reader.feed_line(dumps({"type": "rate_limit_event"})) == []
    assert calls and any("failed to handle" in r.getMessage() for r in caplog.records)
    assert reader.feed_line(assistant(text("Next."))) == ["Next.\n\n"]


def test_feed_line_with_embedded_newlines_and_bytes():
    reader = StreamJsonReader()
    blob = "\n".join([init(), assistant(text("A")), assistant(text("B")), result("B")]) + "\n"
    assert "".join(reader.feed_line(blob.encode())) == "A\n\nB\n\n"
    assert reader.finish() == []


def test_large_line_is_fast():
    big = "word " * 100_000  # 500 KB of text in one block
    line = assistant(text(big)).encode()
    assert len(line) > 500_000
    best = float("inf")
    for _ in range(3):
        reader = StreamJsonReader()
        start = time.perf_counter()
        out = reader.feed(line + b"\n")
        best = min(best, time.perf_counter() - start)
        assert out == [big + "\n\n"]
    assert best < 0.1, f"500 KB line took {best * 1000:.1f} ms"
    # Fed in 4 KB pieces as a pipe would deliver it.
    start = time.perf_counter()
    out = run_bytes(line + b"\n" + result(big).encode() + b"\n", chunk=4096)
    assert time.perf_counter() - start < 0.5
    assert out == big + "\n\n"


# ------------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"type":"system","subtype":"init"}', True),
        (b'{"is_error":false,"type":"result"}\n', True),
        (b"\xef\xbb\xbf" + b'{"type":"assistant"}', True),
        ('{"type": 3}', False),
        ('{"kind":"x"}', False),
        ("[1, 2]", False),
        ("Hello, world.", False),
        ("", False),
        (b"\xff\xfe", False),
        ('{"type":"assistant", "message": ', False),
    ],
)
def test_looks_like_stream_json(line, expected):
    assert looks_like_stream_json(line) is expected


def test_real_first_lines_detected():
    for name in EXPECTED:
        first = fixture_bytes(name).split(b"\n", 1)[0]
        assert looks_like_stream_json(first)


def test_parse_stream_json_is_lazy():
    # Pieces come out as lines go in (live pipes), not at the end.
    seen = []

    def lines():
        yield init()
        yield assistant(text("First."))
        seen.append("after first")
        yield result("First.")

    gen = parse_stream_json(lines())
    assert next(gen) == "First.\n\n"
    assert seen == []


def test_tool_summaries_and_error_messages_reach_the_translator():
    # Item 6 and the error decision, reader side: summaries and error messages are text pieces like
    # the rest, so the pipeline translates them (the fake translator upper-cases what it gets).
    from fakes import FakeTranslator

    from mlx_stream_tts.pipeline import Pipeline

    lines = [init(), assistant(text("I will run the tests."), tool("Bash", {"command": "pytest -q"})),
             synthetic("Not logged in · Please run /login", "authentication_failed"), result("x", is_error=True)]
    pieces = list(parse_stream_json(lines, tools=True))
    assert [is_error_text(p) for p in pieces] == [False, True]
    assert pieces[0] == "I will run the tests.\n\nRunning Bash: pytest -q.\n\n"
    translator = FakeTranslator()
    with Pipeline(translator=translator, voice=None, tgt_lang="jpn_Jpan") as pipeline:
        for piece in pieces:
            pipeline.feed(piece)
    sent = [t for batch in translator.batches for t in batch]
    for sentence in ("I will run the tests.", "Running Bash: pytest -q.", "Not logged in.", "Please run /login."):
        assert any(sentence in t for t in sent), (sentence, sent)
