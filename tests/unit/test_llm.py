"""The streaming chat-completions client against a real local HTTP server, and the conversation history."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from agents.llm import Conversation, Done, LlmClient, LlmConfig, LlmDelta, LlmError, TextDelta, ToolCall
from agents.speech.sentences import SentenceSplitter
from tests.servers.llm import LlmServer, Reply, chunk, error_reply, text_reply, tool_reply

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def server() -> Iterator[LlmServer]:
    with LlmServer() as s:
        yield s


def config(base_url: str, **kw) -> LlmConfig:
    kw.setdefault("first_token_timeout_s", 2.0)
    kw.setdefault("total_timeout_s", 5.0)
    return LlmConfig(base_url=base_url, model="test-model", **kw)


async def collect(cfg: LlmConfig, messages=None, **kw) -> list[LlmDelta]:
    async with LlmClient(cfg) as client:
        stream = client.stream(messages or [{"role": "user", "content": "hi"}], **kw)
        async with contextlib.aclosing(stream):
            return [e async for e in stream]


def test_text_streams_as_deltas_in_order(server):
    server.script(text_reply(["Hel", "lo", " there."], delay_s=0.02))
    events = asyncio.run(collect(config(server.base_url)))
    assert events == [TextDelta("Hel"), TextDelta("lo"), TextDelta(" there."), Done("stop")]
    body = server.requests[0].body
    assert body["model"] == "test-model" and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert "tools" not in body
    assert server.requests[0].path == "/v1/chat/completions"


def test_tool_call_fragments_are_assembled_per_index(server):
    calls = [("call_a", "get_weather", ['{"ci', 'ty": "Pa', 'ris"}']), ("call_b", "hang_up", ["", "{}"])]
    server.script(tool_reply(calls))
    events = asyncio.run(collect(config(server.base_url, tools=(WEATHER_TOOL,))))
    assert events == [
        ToolCall("call_a", "get_weather", {"city": "Paris"}),
        ToolCall("call_b", "hang_up", {}),
        Done("tool_calls"),
    ]
    assert server.requests[0].body["tools"] == [WEATHER_TOOL]


def test_interleaved_tool_call_fragments(server):
    def frag(index: int, **fn: str) -> dict[str, object]:
        return {"tool_calls": [{"index": index, "function": fn}]}

    data = [
        chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "get_", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "get_weather", "arguments": '{"c'}}]}),
        chunk(frag(0, name="weather", arguments='{"city":')),
        chunk(frag(1, arguments='ity": "Oslo"}')),
        chunk(frag(0, arguments=' "Rome"}')),
        chunk({}, "tool_calls"),
        "[DONE]",
    ]
    server.script(Reply(data))
    events = asyncio.run(collect(config(server.base_url)))
    assert events[:2] == [
        ToolCall("c0", "get_weather", {"city": "Rome"}),
        ToolCall("c1", "get_weather", {"city": "Oslo"}),
    ]


def test_bad_tool_arguments_name_the_tool(server):
    server.script(tool_reply([("call_a", "get_weather", ['{"city": '])]))
    with pytest.raises(LlmError, match=r"tool call 'get_weather': arguments are not a JSON object: '\{\"city\": '"):
        asyncio.run(collect(config(server.base_url)))


def test_http_error_names_status_url_and_body(server):
    server.script(error_reply(500, "model exploded"))
    with pytest.raises(LlmError) as err:
        asyncio.run(collect(config(server.base_url)))
    assert str(err.value) == f"LLM endpoint {server.base_url}/chat/completions: HTTP 500: model exploded"


@pytest.mark.parametrize("hang", ["before_headers", "after_headers"])
def test_hang_fails_on_first_token_timeout(server, hang):
    server.script(Reply(hang=hang))
    t0 = time.monotonic()
    with pytest.raises(LlmError, match=r"/v1/chat/completions: no token within 0.3 s$"):
        asyncio.run(collect(config(server.base_url, first_token_timeout_s=0.3)))
    assert time.monotonic() - t0 < 1.0
    assert server.wait_disconnect(1.0), "the client left the hanging request open"


def test_slow_reply_fails_on_total_timeout(server):
    server.script(text_reply(["word "] * 20, delay_s=0.1))
    t0 = time.monotonic()
    with pytest.raises(LlmError, match=r"reply not complete within 0.5 s$"):
        asyncio.run(collect(config(server.base_url, total_timeout_s=0.5)))
    assert time.monotonic() - t0 < 1.0


def test_connection_refused_names_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LlmError, match=rf"LLM endpoint http://127.0.0.1:{port}/v1/chat/completions: cannot connect"):
        asyncio.run(collect(config(f"http://127.0.0.1:{port}/v1")))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["{not json"], r"stream data is not JSON: '\{not json'"),
        ([chunk({"content": "a"}), "x" * 500], r"stream data is not JSON: 'x{200}…'$"),
        ([chunk({"content": "a"})], r"stream ended without finish_reason or \[DONE\]"),
        (['{"error": {"message": "overloaded"}}'], r'error in stream: \{"message": "overloaded"\}'),
        (['{"choices": [{"delta": "oops"}]}'], r"unexpected chunk"),
    ],
)
def test_malformed_stream_is_quoted(server, data, message):
    server.script(Reply(data))
    with pytest.raises(LlmError, match=message):
        asyncio.run(collect(config(server.base_url)))


async def consume_then_stop(server: LlmServer, how: str) -> float:
    """Read two deltas of a long reply, stop the consumer `how`; return how long the server took to see it."""
    got_two = asyncio.Event()

    async def consumer(client: LlmClient) -> None:
        stream = client.stream([{"role": "user", "content": "talk"}])
        async with contextlib.aclosing(stream):
            n = 0
            async for _ in stream:
                n += 1
                if n == 2:
                    got_two.set()
                    if how == "cancel_while_busy":
                        await asyncio.sleep(30)  # e.g. speaking; cancelled here
                    elif how == "aclose":
                        return

    async with LlmClient(config(server.base_url, total_timeout_s=30.0)) as client:
        task = asyncio.create_task(consumer(client))
        await got_two.wait()
        if how != "aclose":
            task.cancel()
        stopped = time.monotonic()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(server.wait_disconnect, 1.0), "server did not see the disconnect"
        return server.disconnects[0] - stopped


@pytest.mark.parametrize("how", ["cancel_while_reading", "cancel_while_busy", "aclose"])
def test_stopping_the_consumer_closes_the_connection(server, how):
    server.script(text_reply([f"w{i} " for i in range(200)], delay_s=0.05))
    assert asyncio.run(consume_then_stop(server, how)) < 1.0
    assert len(server.requests) == 1


def test_authorization_header_only_with_api_key(server):
    server.script(text_reply(["a"]), text_reply(["b"]))
    asyncio.run(collect(config(server.base_url, api_key="sk-test")))
    asyncio.run(collect(config(server.base_url)))
    assert server.requests[0].headers["authorization"] == "Bearer sk-test"
    assert "authorization" not in server.requests[1].headers


def test_tools_argument_replaces_configured_tools(server):
    server.script(text_reply(["a"]))
    asyncio.run(collect(config(server.base_url, tools=(WEATHER_TOOL,)), tools=[]))
    assert "tools" not in server.requests[0].body


def test_interrupted_reply_keeps_only_what_was_heard(server):
    """Speak sentence by sentence, barge in during the second: the next request carries only what was played."""
    server.script(text_reply(["Sure. The weather in Paris ", "is sunny, with 3.5 mm of rain. ", "Anything else?"]))
    server.script(text_reply(["OK."]))
    conv = Conversation("You are a phone agent.")
    conv.add_user("Weather in Paris?")

    async def turn() -> None:
        async with LlmClient(config(server.base_url)) as client:
            splitter = SentenceSplitter()
            sentences: list[str] = []
            async with contextlib.aclosing(client.stream(conv.messages)) as stream:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        sentences += splitter.feed(event.text)
            sentences += splitter.flush()
            assert sentences == ["Sure.", "The weather in Paris is sunny, with 3.5 mm of rain.", "Anything else?"]
            conv.add_assistant_spoken(sentences[:2], interrupted=True)  # cut off in the second sentence
            conv.add_user("Thanks, bye.")
            await collect(client.config, conv.messages)

    asyncio.run(turn())
    assert server.requests[1].body["messages"] == [
        {"role": "system", "content": "You are a phone agent."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Sure. The weather in Paris is sunny, with 3.5 mm of rain.…"},
        {"role": "user", "content": "Thanks, bye."},
    ]


def test_history_records_tool_calls_in_api_format():
    conv = Conversation("sys")
    conv.add_user("Weather in Rome?")
    conv.add_tool_calls([ToolCall("call_1", "get_weather", {"city": "Rome"})])
    conv.add_tool_result("call_1", '{"sky": "clear"}')
    conv.add_assistant_spoken(["It is clear."], interrupted=False)
    conv.add_assistant_spoken([], interrupted=True)
    assert conv.messages[2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
        {"role": "assistant", "content": "It is clear."},
        {"role": "assistant", "content": "…"},
    ]
