"""`hymoe chat`: the interactive loop around a ChatSession.

On a terminal, prompt-toolkit gives line editing and a history kept across sessions; piped input
is read line by line. Ctrl-C stops a reply and keeps the conversation; at the prompt it clears
the line. Lines that begin with / are commands, never sent to the model.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from hymoe.engine.chat import ChatSession
from hymoe.errors import HymoeError

HELP = """commands:
  /help                 this list
  /system TEXT          set the system prompt and start over (/system alone: none)
  /set NAME VALUE       temperature, top_p, top_k, max_tokens, repetition_penalty or seed
  /show                 the system prompt and sampling settings
  /reset                clear the conversation (also /clear)
  /exit                 quit (also /bye, Ctrl-D)
Ctrl-C stops a reply; the conversation keeps what was said."""

# /set names -> (SamplingParams field, type)
SETTINGS = {"temperature": ("temperature", float), "top_p": ("top_p", float), "top_k": ("top_k", int),
            "max_tokens": ("max_new_tokens", int), "repetition_penalty": ("repetition_penalty", float),
            "seed": ("seed", int)}


def _reader():
    """A function returning the next line (EOFError at the end): prompt-toolkit on a terminal."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return lambda: input("> ")
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hymoe"
    cache.mkdir(parents=True, exist_ok=True)
    session = PromptSession(history=FileHistory(str(cache / "chat_history")))
    return lambda: session.prompt("> ")


def set_value(session: ChatSession, name: str, value: str) -> str:
    """Apply `/set name value`; the line to show."""
    if name not in SETTINGS:
        raise HymoeError(f"unknown setting {name!r} (one of {', '.join(SETTINGS)})")
    field, kind = SETTINGS[name]
    try:
        parsed = kind(value)
    except ValueError:
        raise HymoeError(f"/set {name} takes a number, got {value!r}") from None
    bad = (name in ("temperature", "repetition_penalty") and parsed < 0) or (name == "top_p" and not 0 < parsed <= 1) \
        or (name in ("top_k",) and parsed < 0) or (name == "max_tokens" and parsed < 1)
    if bad:
        raise HymoeError(f"/set {name}: {value} is out of range")
    session.params = dataclasses.replace(session.params, **{field: parsed})
    return f"({name} = {parsed})"


def command(session: ChatSession, line: str) -> str | None:
    """Run one /command; the text to show, or None to quit."""
    name, _, rest = line[1:].partition(" ")
    rest = rest.strip()
    if name in ("exit", "bye", "quit"):
        return None
    if name in ("reset", "clear"):
        session.reset()
        return "(conversation cleared)"
    if name == "help":
        return HELP
    if name == "system":
        session.reset(system=rest)
        return "(system prompt set; conversation cleared)" if rest else "(no system prompt; conversation cleared)"
    if name == "set":
        setting, _, value = rest.partition(" ")
        return set_value(session, setting, value.strip())
    if name == "show":
        p = session.params
        return (f"system: {session.system or '(none)'}\ntemperature {p.temperature}, top_p {p.top_p}, top_k {p.top_k}, "
                f"max_tokens {p.max_new_tokens}, repetition_penalty {p.repetition_penalty}, seed {p.seed}")
    raise HymoeError(f"unknown command /{name} (/help lists them)")


def _reply(session: ChatSession, line: str) -> None:
    """Stream one reply, then its token count and speed (or that it was stopped)."""
    first: list[float] = []

    def show(text: str) -> None:
        if not first:
            first.append(time.perf_counter())
        print(text, end="", flush=True)

    try:
        session.reply(line, on_text=show)
        stopped = ""
    except KeyboardInterrupt:
        stopped = "stopped; "
    seconds = time.perf_counter() - first[0] if first else 0.0  # decode time: from the first token on
    rate = f", {(session.last_tokens - 1) / seconds:.1f} tok/s" if seconds > 0 and session.last_tokens > 1 else ""
    print(f"\n({stopped}{session.last_tokens} tokens{rate})", file=sys.stderr)


def run(session: ChatSession) -> None:
    # Ctrl-C stops a reply even when the chat was started with SIGINT ignored (a background job of a
    # non-interactive shell, nohup under some shells): Python keeps an inherited SIG_IGN otherwise
    signal.signal(signal.SIGINT, signal.default_int_handler)
    read = _reader()
    print("hymoe chat: /help lists the commands, /exit quits", file=sys.stderr)
    while True:
        try:
            line = read().strip()
        except EOFError:
            break
        except KeyboardInterrupt:  # at the prompt: a fresh line, as shells do
            print("(Ctrl-D or /exit quits)", file=sys.stderr)
            continue
        if not line:
            continue
        try:
            if line.startswith("/"):
                shown = command(session, line)
                if shown is None:
                    break
                print(shown)
                continue
            _reply(session, line)
        except HymoeError as e:
            print(f"hymoe: {e}", file=sys.stderr)
