"""Constrained decoding through the live server: response formats, forced and parsed tool calls, with
the official openai and ollama clients. The demo model never saw JSON: only the grammar makes its
output parse, so every parse below is the constraint's doing."""
from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

from test_serve import LiveServer  # noqa: E402

import hymoe  # noqa: E402
from hymoe.default_model import ensure_default_model  # noqa: E402
from hymoe.serve.structured import ToolPlan, ToolStream  # noqa: E402

MAX_TOKENS = 400  # room for the largest generated schema's compact JSON


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """An object of 1-4 properties: string, integer, number, boolean, enum, array, nested object;
    bounded (maxLength, ranges, maxItems) so a model that never ends a string still finishes."""
    kinds = ["string", "integer", "number", "boolean", "enum", "array"] + (["object"] if depth < 2 else [])
    props = {}
    for i in range(rng.randint(1, 4)):
        kind = rng.choice(kinds)
        if kind == "string":
            p = {"type": "string", "maxLength": rng.randint(1, 12)}
        elif kind == "integer":
            p = {"type": "integer", "minimum": -100, "maximum": rng.randint(0, 10000)}
        elif kind == "number":
            p = {"type": "number", "minimum": 0, "maximum": 100}
        elif kind == "enum":
            p = {"enum": rng.sample(["red", "green", "blue", "amber", "violet"], rng.randint(1, 4))}
        elif kind == "array":
            items = rng.choice([{"type": "integer", "minimum": 0, "maximum": 99}, {"type": "boolean"}])
            p = {"type": "array", "items": items, "maxItems": rng.randint(1, 3)}
        elif kind == "object":
            p = random_schema(rng, depth + 1)
        else:
            p = {"type": "boolean"}
        props[f"{kind[:3]}_{i}"] = p
    required = sorted(rng.sample(list(props), rng.randint(0, len(props))))
    return {"type": "object", "properties": props, "required": required}


def random_tool(rng: random.Random, i: int) -> dict:
    return {"type": "function", "function": {"name": f"tool_{i}", "description": "a generated function",
                                             "parameters": random_schema(rng)}}


@pytest.fixture(scope="module")
def live():
    llm = hymoe.load(ensure_default_model(), dtype="float32", progress=False, max_context=2048)
    s = LiveServer(llm, max_batch=8, max_queue=32)
    yield s
    s.stop()


def _chat(client, **kw):
    return client.chat.completions.create(model="hymoe-demo", temperature=0, max_tokens=kw.pop("max_tokens", MAX_TOKENS),
                                          messages=[{"role": "user", "content": kw.pop("prompt", "Answer.")}], **kw)


def test_twenty_random_schemas_parse_and_validate(live):
    rng = random.Random(25)
    schemas = [random_schema(rng) for _ in range(20)]

    def one(schema):
        fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
        return _chat(live.client(), response_format=fmt).choices[0]

    with ThreadPoolExecutor(8) as pool:
        choices = list(pool.map(one, schemas))
    for schema, choice in zip(schemas, choices):
        assert choice.finish_reason == "stop", (schema, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_twenty_forced_tool_calls_match_their_signatures(live):
    rng = random.Random(26)
    tools = [random_tool(rng, i) for i in range(20)]

    def one(i):
        choice = "required" if i % 2 else {"type": "function", "function": {"name": f"tool_{i}"}}
        offered = [tools[i]] if i % 2 else [tools[i], tools[(i + 1) % 20]]  # the prompt shows their schemas
        return _chat(live.client(), tools=offered, tool_choice=choice).choices[0]

    with ThreadPoolExecutor(8) as pool:
        choices = list(pool.map(one, range(20)))
    for i, choice in enumerate(choices):
        assert choice.finish_reason == "tool_calls", choice.message.content
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_") and call.function.name == f"tool_{i}"
        jsonschema.validate(json.loads(call.function.arguments), tools[i]["function"]["parameters"])


def test_json_object_mode_and_completions(live):
    r = _chat(live.client(), response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 999}}, "required": ["n"]}
    c = live.client().completions.create(model="hymoe-demo", prompt="And God said", max_tokens=60, temperature=0,
                                         extra_body={"response_format": {"type": "json_schema",
                                                                         "json_schema": {"schema": schema}}})
    jsonschema.validate(json.loads(c.choices[0].text), schema)


def test_streamed_tool_call_deltas_reassemble_the_call(live):
    tool = random_tool(random.Random(27), 0)
    kw = dict(tools=[tool], tool_choice="required")
    whole = _chat(live.client(), **kw).choices[0].message.tool_calls[0]
    calls, finish, pieces = {}, [], 0
    for ch in _chat(live.client(), stream=True, **kw):
        delta = ch.choices[0].delta
        assert not delta.content
        for d in delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": d.id, "name": d.function.name, "arguments": ""})
            c["arguments"] += d.function.arguments or ""
            pieces += bool(d.function.arguments)
        finish += [ch.choices[0].finish_reason] if ch.choices[0].finish_reason else []
    assert finish == ["tool_calls"] and list(calls) == [0]
    assert pieces > 1  # the arguments stream as they are written
    assert calls[0]["id"].startswith("call_") and calls[0]["name"] == whole.function.name
    assert json.loads(calls[0]["arguments"]) == json.loads(whole.function.arguments)


def test_a_batch_mixing_constrained_and_free_requests(live):
    free = _chat(live.client(), prompt="Who was Moses?", max_tokens=32).choices[0].message.content
    schema = random_schema(random.Random(28))
    fmt = {"type": "json_schema", "json_schema": {"schema": schema}}

    def one(i):
        if i % 2:
            return _chat(live.client(), prompt="Who was Moses?", max_tokens=32).choices[0].message.content
        return _chat(live.client(), response_format=fmt).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(one, range(8)))
    assert out[1::2] == [free] * 4  # the mask of the others leaves a free row's logits alone
    for text in out[::2]:
        jsonschema.validate(json.loads(text), schema)


def test_a_cut_constrained_output_ends_with_length(live):
    fmt = {"type": "json_schema", "json_schema": {"schema": random_schema(random.Random(29))}}
    r = _chat(live.client(), response_format=fmt, max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2


@pytest.mark.parametrize("extra, fragment", [
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}, "not supported"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function",
                                                                                  "function": {"name": "g"}}}, "'g'"),
])
def test_a_bad_schema_or_choice_is_a_400(live, extra, fragment):
    with pytest.raises(openai.BadRequestError) as e:
        _chat(live.client(), **extra)
    assert e.value.status_code == 400 and fragment in e.value.message and "\n" not in e.value.message


def test_ollama_format_and_tools(live):
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=live.url)
    schema = random_schema(random.Random(30))
    r = client.chat(model="hymoe-demo", messages=[{"role": "user", "content": "Answer."}], format=schema,
                    options={"temperature": 0, "num_predict": MAX_TOKENS})
    jsonschema.validate(json.loads(r.message.content), schema)
    parts = client.chat(model="hymoe-demo", messages=[{"role": "user", "content": "Answer."}], format=schema,
                        options={"temperature": 0, "num_predict": MAX_TOKENS}, stream=True)
    assert "".join(p.message.content for p in parts) == r.message.content
    g = client.generate(model="hymoe-demo", prompt="Answer.", format="json",
                        options={"temperature": 0, "num_predict": MAX_TOKENS})
    assert isinstance(json.loads(g.response), dict)
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="hymoe-demo", prompt="Answer.", format={"type": "nonsense"})
    assert e.value.status_code == 400


def test_auto_tool_calls_are_read_from_the_text():
    plan = ToolPlan([random_tool(random.Random(31), 0)], "auto")
    text = 'Let me look.<tool_call>{"name": "tool_0", "arguments": {"a": 1}}</tool_call>'
    assert plan.parse(text) == ("Let me look.", [{"name": "tool_0", "arguments": {"a": 1}}])
    assert plan.parse('{"name": "tool_0", "parameters": {}}') == (None, [{"name": "tool_0", "arguments": {}}])
    assert plan.parse('{"name": "other", "arguments": {}}')[1] == []
    stream = ToolStream(plan)
    sent = "".join(stream.feed(p) for p in ["Let ", "me look.<tool", '_call>{"name": "tool_0", ', '"arguments": {}}'])
    assert sent == "Let me look." and stream.finish() == ("", [{"name": "tool_0", "arguments": {}}])


def test_tools_reach_the_chat_template(live):
    """A template that renders tools gets them (and earlier calls' arguments as objects); one that
    does not gets them in a system message."""
    server, hf = live.server, live.server.llm.tokenizer.hf
    tool = random_tool(random.Random(32), 0)
    call = {"id": "call_1", "type": "function", "function": {"name": "tool_0", "arguments": '{"a": 1}'}}
    msgs = [{"role": "user", "content": "Go."}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "done", "tool_call_id": "call_1"}]
    plain = hf.decode(server.chat_ids(msgs, [tool]))
    assert '"name": "tool_0"' in plain and plain.index("tool_0") < plain.index("Go.")
    saved = hf.chat_template
    hf.chat_template = ("{% for t in tools %}[TOOL {{ t.function.name }}]{% endfor %}{% for m in messages %}"
                        "{% for c in m.tool_calls or [] %}[CALL {{ c.function.arguments.a }}]{% endfor %}"
                        "{{ m.content }}{% endfor %}")
    try:
        text = hf.decode(server.chat_ids(msgs, [tool]))
    finally:
        hf.chat_template = saved
    assert text.startswith("[TOOL tool_0]") and "[CALL 1]" in text


def test_a_forced_call_streams_its_arguments_and_a_cut_one_keeps_what_it_has():
    plan = ToolPlan([random_tool(random.Random(33), 0)], "required")
    stream, args = ToolStream(plan), []
    for piece in ['{"name": "to', 'ol_0", "arguments": {"a"', ': 1}', "}"]:
        assert stream.feed(piece) == ""
        args += [d["tool_calls"][0]["function"]["arguments"] for d in stream.openai_deltas()]
    rest, calls = stream.finish()
    args += [d["tool_calls"][0]["function"]["arguments"] for d in stream.openai_deltas(True, calls)]
    # the last character waits: it may close the call
    assert rest == "" and calls == [{"name": "tool_0", "arguments": {"a": 1}}] and args == ["", '{"a', '": 1', "}"]
    cut = ToolStream(plan)
    cut.feed('{"name": "tool_0", "arguments": {"a": 1')
    deltas = cut.openai_deltas() + cut.openai_deltas(True, cut.finish()[1])
    assert "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas) == '{"a": 1'
