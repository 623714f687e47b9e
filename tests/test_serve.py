"""``python -m lmcore.serve`` as a real server: a child process on a free port of 127.0.0.1, talked
to with the official ``openai`` client and with raw HTTP. The replies (chat and completions,
streaming and not, OpenAI's chunk shapes), the seed, stop strings, usage, and the OpenAI-shaped
errors of bad requests; more in test_serve_load.py (concurrency, disconnects, signals) and
test_serve_page.py (the chat page in a headless browser)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from serve_helpers import Server, train_chat_model, train_plain_model

ECHO = [{"role": "system", "content": "You echo."}, {"role": "user", "content": "say king"}]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_chat_model(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_plain_model(tmp_path_factory.mktemp("plain"), block=256)


@pytest.fixture(scope="module")
def chat_server(chat_dir):
    with Server("--out-dir", str(chat_dir), "--parallel", "2", "--model-name", "chat") as s:
        yield s


@pytest.fixture(scope="module")
def plain_server(plain_dir):
    with Server(str(plain_dir / "ckpt.safetensors"), "--model-name", "plain") as s:
        yield s


def client(server: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def post(server: Server, path: str, body: bytes | str | dict, **kwargs) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(server.url + path, content=content, timeout=60, **kwargs)


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    doc = r.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}, doc
    assert doc["error"]["message"] and "\n" not in doc["error"]["message"] and "Traceback" not in r.text
    if code is not None:
        assert doc["error"]["code"] == code, doc
    if param is not None:
        assert doc["error"]["param"] == param, doc
    return doc["error"]


# --- the API through the openai client ---


def test_health_and_models(chat_server):
    assert httpx.get(chat_server.url + "/health", timeout=10).json() == {"status": "ok"}
    models = client(chat_server).models.list()
    assert [m.id for m in models.data] == ["chat"]
    assert models.data[0].object == "model"
    assert client(chat_server).models.retrieve("chat").id == "chat"


def test_chat_completion_answers_with_the_chat_template(chat_server):
    r = client(chat_server).chat.completions.create(model="chat", messages=ECHO, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == "king king."
    assert r.choices[0].finish_reason == "stop"
    # 11 prompt tokens: <|system|> "You echo." <|end|> is 11, the user turn 10, <|assistant|> 1
    assert r.usage.prompt_tokens == 1 + 9 + 1 + 1 + 8 + 1 + 1
    assert r.usage.completion_tokens == len("king king.") + 1  # and the <|end|> that ended it
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_is_openai_chunks(chat_server):
    chunks = list(client(chat_server).chat.completions.create(model="chat", messages=ECHO, temperature=0, stream=True,
                                                              stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and not chunks[0].choices[0].delta.content
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert pieces == list("king king.")  # a chunk per token (a character, with this tokenizer)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 11
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_stream_ends_with_done(chat_server):
    r = post(chat_server, "/v1/chat/completions", {"messages": ECHO, "temperature": 0, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: ") for e in events[:-1])
    docs = [json.loads(e[6:]) for e in events[:-2]]
    assert "usage" not in docs[0] and docs[-1]["choices"][0]["delta"] == {}


def test_completions_seed_stop_and_length(plain_server):
    c = client(plain_server)
    one = c.completions.create(model="plain", prompt="ROMEO:", max_tokens=40, seed=5, temperature=1.0)
    again = c.completions.create(model="plain", prompt="ROMEO:", max_tokens=40, seed=5, temperature=1.0)
    other = c.completions.create(model="plain", prompt="ROMEO:", max_tokens=40, seed=6, temperature=1.0)
    assert one.object == "text_completion" and one.choices[0].finish_reason == "length"
    assert one.choices[0].text == again.choices[0].text != other.choices[0].text
    assert one.usage.prompt_tokens == 6 and one.usage.completion_tokens == 40
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="plain", prompt="ROMEO:", max_tokens=40, seed=5, stream=True) if ch.choices)
    assert streamed == one.choices[0].text
    # A stop string taken from the text: the reply ends just before it, finish "stop".
    text = one.choices[0].text
    stop = text[10:13]
    cut = c.completions.create(model="plain", prompt="ROMEO:", max_tokens=40, seed=5, stop=[stop, "\u00e9\u00e9\u00e9"])
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    cut_stream = "".join(ch.choices[0].text for ch in c.completions.create(
        model="plain", prompt="ROMEO:", max_tokens=40, seed=5, stop=stop, stream=True) if ch.choices)
    assert cut_stream == cut.choices[0].text


def test_the_window_ends_a_long_reply_with_length(plain_server):
    r = client(plain_server).completions.create(model="plain", prompt="A" * 250, max_tokens=100, seed=1)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 256 - 250 + 1


def test_a_model_without_chat_markers_refuses_chat_in_one_line(plain_server):
    with pytest.raises(openai.BadRequestError) as e:
        client(plain_server).chat.completions.create(model="plain", messages=ECHO)
    assert "no chat template" in e.value.message and e.value.code == "model_not_chat"


# --- errors, through raw HTTP ---

BAD_REQUESTS = [
    (b"", 400, None, None),
    (b"   ", 400, None, None),
    (b"{not json", 400, None, None),
    (b"\xff\xfe{}", 400, None, None),
    (b"[1, 2]", 400, None, None),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, None, None),
    (b"[" * 100000 + b"]" * 100000, 400, None, None),
    ({"messages": "say king"}, 400, "invalid_type", "messages"),
    ({"messages": []}, 400, "invalid_value", "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, None, "messages[0]"),
    ({"messages": [{"role": "user", "content": 3}]}, 400, None, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, None, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "say \u4e16"}]}, 400, None, "messages"),
    ({"messages": ECHO, "temperature": "hot"}, 400, "invalid_type", "temperature"),
    ({"messages": ECHO, "temperature": 3}, 400, "invalid_value", "temperature"),
    ({"messages": ECHO, "top_p": 0}, 400, "invalid_value", "top_p"),
    ({"messages": ECHO, "top_k": 1.5}, 400, "invalid_type", "top_k"),
    ({"messages": ECHO, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ({"messages": ECHO, "max_tokens": True}, 400, "invalid_type", "max_tokens"),
    ({"messages": ECHO, "stream": "yes"}, 400, "invalid_type", "stream"),
    ({"messages": ECHO, "stream_options": {"include_usage": True}}, 400, None, "stream_options"),
    ({"messages": ECHO, "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "stop"),
    ({"messages": ECHO, "stop": 5}, 400, "invalid_type", "stop"),
    ({"messages": ECHO, "seed": "one"}, 400, "invalid_type", "seed"),
    ({"messages": ECHO, "n": 2}, 400, "invalid_value", "n"),
    ({"messages": ECHO, "frequency_penalty": 0.5}, 400, "unsupported_value", "frequency_penalty"),
    ({"messages": ECHO, "prompt": "x"}, 400, "unknown_parameter", "prompt"),
    ({"messages": ECHO, "bogus": 1}, 400, "unknown_parameter", "bogus"),
    ({"messages": ECHO, "model": "gpt-4"}, 404, "model_not_found", "model"),
    ({"messages": ECHO, "model": 4}, 400, "invalid_type", "model"),
    ({"messages": [{"role": "user", "content": "say king " * 20}]}, 400, "context_length_exceeded", "messages"),
    ({"messages": [{"role": "user", "content": "say king " * 20}], "stream": True}, 400, "context_length_exceeded",
     "messages"),
]


@pytest.mark.parametrize("body, status, code, param", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_chat_requests_get_openai_errors(chat_server, body, status, code, param):
    assert_error(post(chat_server, "/v1/chat/completions", body), status, code, param)


BAD_COMPLETIONS = [
    ({"prompt": ""}, "invalid_value"),
    ({"prompt": 5}, "invalid_type"),
    ({"prompt": ["a", "b"]}, "invalid_value"),
    ({"prompt": [1, 99999]}, "invalid_value"),
    ({"prompt": "A" * 257}, "context_length_exceeded"),
    ({"prompt": "A", "messages": []}, "unknown_parameter"),
    ({"prompt": "A", "echo": True}, "unsupported_value"),
]


@pytest.mark.parametrize("body, code", BAD_COMPLETIONS, ids=range(len(BAD_COMPLETIONS)))
def test_bad_completion_requests_get_openai_errors(plain_server, body, code):
    assert_error(post(plain_server, "/v1/completions", body), 400, code)


def test_a_body_over_a_megabyte_is_413(chat_server):
    big = {"messages": ECHO, "user": "x" * (1 << 20)}
    assert_error(post(chat_server, "/v1/chat/completions", big), 413, "request_too_large")

    def chunks():  # no Content-Length: counted as it comes
        yield b'{"messages": [], "user": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    r = httpx.post(chat_server.url + "/v1/chat/completions", content=chunks(), timeout=60)
    assert_error(r, 413, "request_too_large")


def test_unknown_paths_and_methods_are_openai_errors(chat_server):
    assert_error(httpx.get(chat_server.url + "/v1/nothing", timeout=10), 404, "not_found")
    assert_error(httpx.get(chat_server.url + "/v1/chat/completions", timeout=10), 405, "method_not_allowed")
    assert_error(httpx.get(chat_server.url + "/v1/models/other", timeout=10), 404, "model_not_found")


def test_the_server_still_answers_after_the_bad_requests(chat_server):
    r = client(chat_server).chat.completions.create(model="chat", messages=ECHO, temperature=0)
    assert r.choices[0].message.content == "king king."
    assert "Traceback" not in chat_server.log()


def test_an_api_key_guards_the_api_but_not_health(chat_dir):
    with Server("--out-dir", str(chat_dir), "--api-key", "s3cret") as s:
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200
        assert_error(httpx.get(s.url + "/v1/models", timeout=10), 401, "invalid_api_key")
        assert_error(post(s, "/v1/chat/completions", {"messages": ECHO}, headers={"Authorization": "Bearer nope"}),
                     401, "invalid_api_key")
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").models.list()
        assert [m.id for m in client(s, "s3cret").models.list().data] == [chat_dir.name]  # the folder's name
        r = client(s, "s3cret").chat.completions.create(model=chat_dir.name, messages=ECHO, temperature=0)
        assert r.choices[0].message.content == "king king."
