"""Structured output for both APIs: response formats and tool calls -> grammars, and tool calls read
back from the generated text (OpenAI `tool_calls`, Ollama `message.tool_calls`).

tool_choice "required" or a named function constrains the output to {"name": ..., "arguments": {...}}
matching the function's parameter schema; "auto" lets the model write freely and reads Hermes/Qwen
`<tool_call>{...}</tool_call>` blocks, or a whole output that is such a JSON object, as calls.
"""
from __future__ import annotations

import json
import re
import uuid

from hymoe.engine.grammar import GrammarError
from hymoe.errors import HymoeError
from hymoe.serve.protocol import ApiError

TAG, END_TAG = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
# a forced call as the grammar writes it (compact JSON, properties in the schema's order)
_FORCED_HEAD = re.compile(r'\{"name": "([^"\\]*)", "arguments": ')


def _compile(llm, build, param: str):
    try:
        return build(llm.grammars)
    except GrammarError as e:
        raise ApiError(400, str(e), param=param) from None
    except HymoeError as e:  # no tokenizer, or no grammar library
        raise ApiError(400, f"structured output is not available: {e}", param=param) from None


def openai_grammar(llm, response_format: dict | None):
    """response_format {"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": ...}}."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return _compile(llm, lambda g: g.json_object(), "response_format")
    if kind != "json_schema":
        raise ApiError(400, f"response_format type {kind!r} is not one of text, json_object, json_schema",
                       param="response_format")
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, (dict, bool)):
        raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object",
                       param="response_format")
    return _compile(llm, lambda g: g.json_schema(schema), "response_format")


def ollama_grammar(llm, fmt):
    """Ollama's `format`: "json", or a JSON schema object."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return _compile(llm, lambda g: g.json_object(), "format")
    if not isinstance(fmt, dict):
        raise ApiError(400, "'format' must be \"json\" or a JSON schema object", param="format")
    return _compile(llm, lambda g: g.json_schema(fmt), "format")


class ToolPlan:
    """What a request's `tools` and `tool_choice` ask: the functions, and whether the output is
    forced to a call ("required", or one named function), read for calls ("auto") or neither ("none")."""

    def __init__(self, tools: list[dict] | None, tool_choice=None):
        self.functions = {}
        for i, t in enumerate(tools or []):
            f = t.get("function") if isinstance(t, dict) else None
            if t.get("type", "function") != "function" or not isinstance(f, dict) or not f.get("name"):
                raise ApiError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                               param="tools")
            self.functions[f["name"]] = f
        self.choice, self.forced = self._choice(tool_choice)

    def _choice(self, choice) -> tuple[str, list[str]]:
        if choice is None:
            choice = "auto" if self.functions else "none"
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if name not in self.functions:
                raise ApiError(400, f"tool_choice names the function {name!r}, which is not in tools",
                               param="tool_choice")
            return "named", [name]
        if choice not in ("auto", "none", "required"):
            raise ApiError(400, "tool_choice must be auto, none, required or a named function", param="tool_choice")
        if choice != "none" and not self.functions:
            raise ApiError(400, f"tool_choice {choice!r} needs tools", param="tool_choice")
        return choice, list(self.functions) if choice == "required" else []

    @property
    def tools(self) -> list[dict] | None:
        """The tools the chat template shows the model."""
        return [{"type": "function", "function": f} for f in self.functions.values()] or None

    @property
    def is_reading_calls(self) -> bool:
        return self.choice != "none"

    def grammar(self, llm):
        """For a forced call: JSON {"name", "arguments"} whose arguments match the function's parameters."""
        if not self.forced:
            return None
        branches = [{"type": "object", "properties": {
            "name": {"const": name},
            "arguments": self.functions[name].get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"]} for name in self.forced]
        schema = branches[0] if len(branches) == 1 else {"anyOf": branches}
        return _compile(llm, lambda g: g.json_schema(schema), "tools")

    def parse(self, text: str) -> tuple[str | None, list[dict]]:
        """(the text outside tool calls or None, the calls [{"name", "arguments": dict}])."""
        if not self.is_reading_calls:
            return text, []
        whole = self._call(text.strip())
        if whole is not None:
            return None, [whole]
        calls = [c for c in (self._call(m.group(1)) for m in _BLOCK.finditer(text)) if c is not None]
        if not calls:
            return text, []
        rest = _BLOCK.sub("", text)
        return (rest if rest.strip() else None), calls

    def _call(self, text: str) -> dict | None:
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        if not isinstance(obj, dict) or obj.get("name") not in self.functions:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # some templates teach the model arguments as a JSON string
            try:
                args = json.loads(args)
            except ValueError:
                return None
        return {"name": obj["name"], "arguments": args} if isinstance(args, dict) else None


def describe_tools(tools: list[dict]) -> str:
    """A system message for a chat template that does not render tools itself."""
    lines = [json.dumps(t["function"]) for t in tools]
    return ("You may call these functions. To call one, answer only "
            f'{TAG}{{"name": <function name>, "arguments": <JSON object>}}{END_TAG}\n' + "\n".join(lines))


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as chat templates read them: a call's arguments as an object, not a JSON string."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [_template_call(c) for c in m["tool_calls"]]
        out.append(m)
    return out


def _template_call(call: dict) -> dict:
    f = dict(call.get("function") or {})
    if isinstance(f.get("arguments"), str):
        try:
            f["arguments"] = json.loads(f["arguments"])
        except ValueError:
            pass
    return {**call, "function": f}


def openai_calls(calls: list[dict]) -> list[dict]:
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in calls]


def _head_delta(i: int, name: str) -> dict:
    return {"tool_calls": [{"index": i, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                            "function": {"name": name, "arguments": ""}}]}


def _args_delta(i: int, text: str) -> dict:
    return {"tool_calls": [{"index": i, "function": {"arguments": text}}]}


def openai_call_deltas(calls: list[dict]) -> list[dict]:
    """Streamed as OpenAI does: per call, its id and name with empty arguments, then the arguments."""
    deltas = []
    for i, c in enumerate(calls):
        deltas += [_head_delta(i, c["name"]), _args_delta(i, json.dumps(c["arguments"]))]
    return deltas


def ollama_calls(calls: list[dict]) -> list[dict]:
    return [{"function": {"index": i, "name": c["name"], "arguments": c["arguments"]}} for i, c in enumerate(calls)]


class ToolStream:
    """Streamed text while calls are read: text goes out as it comes until it may begin a call (a
    `<tool_call>` tag, or a first character `{`); from there it is held and read at the end."""

    def __init__(self, plan: ToolPlan):
        self.plan, self.text, self.sent = plan, "", 0
        self.args_sent = -1  # a forced call streamed as it is written: characters of its arguments sent

    def feed(self, piece: str) -> str:
        self.text += piece
        if not self.plan.is_reading_calls:
            return self._send(len(self.text))
        if self.plan.forced or self.text.lstrip()[:1] in ("", "{"):
            return ""
        at = self.text.find(TAG)
        if at < 0:  # hold a tail that may be the beginning of the tag
            at = next((i for i in range(max(0, len(self.text) - len(TAG)), len(self.text))
                       if TAG.startswith(self.text[i:])), len(self.text))
        return self._send(at)

    def finish(self) -> tuple[str, list[dict]]:
        """(the text still to send, the calls)."""
        content, calls = self.plan.parse(self.text)
        content = content or ""
        rest = content[self.sent:] if content.startswith(self.text[:self.sent]) and self.args_sent < 0 else ""
        return rest, calls

    def openai_deltas(self, is_done: bool = False, calls: list[dict] | None = None) -> list[dict]:
        """OpenAI tool_call deltas: a forced call's arguments as they are written (all but the last
        character, which may close the call); read calls at the end."""
        if self.plan.forced and (head := _FORCED_HEAD.match(self.text)):
            deltas = [_head_delta(0, head.group(1))] if self.args_sent < 0 else []
            self.args_sent = max(self.args_sent, 0)
            args = self.text[head.end():].rstrip()
            end = len(args) - 1 if not is_done or calls else len(args)  # a cut call: all it has
            if end > self.args_sent:
                deltas.append(_args_delta(0, args[self.args_sent:end]))
                self.args_sent = end
            return deltas
        return openai_call_deltas(calls) if is_done and calls else []

    def _send(self, end: int) -> str:
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out
