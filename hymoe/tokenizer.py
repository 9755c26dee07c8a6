"""Tokenizer, chat template and stop tokens of a Hugging Face model directory."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from hymoe.errors import HymoeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class Tokenizer:
    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer

    @staticmethod
    def from_dir(model_dir: Path) -> "Tokenizer | None":
        if not any((Path(model_dir) / f).is_file() for f in TOKENIZER_FILES):
            return None
        from transformers import AutoTokenizer

        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            hf = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            # what every prompt does: a bad setting (model_max_length a string) fails here, not at the first prompt
            hf.decode(hf.encode("Hello, world."))
            return Tokenizer(hf)
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises bare Exceptions on a bad file
            raise HymoeError(f"{model_dir}: cannot load the tokenizer ({one_line(e)})") from None

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    @property
    def renders_tools(self) -> bool:
        """The chat template shows the model the `tools` it is given."""
        return self.has_chat_template and "tools" in str(self.hf.chat_template)

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        if not self.has_chat_template:
            raise HymoeError("this model's tokenizer has no chat template")
        extra = {"tools": tools} if tools else {}
        try:
            out = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **extra)
        except Exception as e:  # noqa: BLE001 - the template is the model's code: jinja errors, raise_exception()
            raise HymoeError(f"this model's chat template failed ({one_line(e)})") from None
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        eos = self.hf.eos_token_id
        return () if eos is None else (eos,)


def one_line(e: Exception) -> str:
    """An exception from a library, as the short first line of a message."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 200 else text[:197] + "..."


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# generation_config.json fields the CLI and engine read -> (check, what each must be): a string temperature
# reached a comparison in the CLI as a traceback
_GENERATION_FIELDS = {
    "do_sample": (lambda v: isinstance(v, bool), "true or false"),
    "temperature": (lambda v: v is None or _is_number(v) and 0 <= v < float("inf"), "a number >= 0"),
    "top_p": (lambda v: v is None or _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (lambda v: v is None or _is_id(v), "an integer >= 0"),
    "eos_token_id": (lambda v: v is None or _is_id(v) or isinstance(v, list) and all(map(_is_id, v)),
                     "a token id or a list of them"),
}


def generation_defaults(model_dir: Path) -> dict:
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HymoeError(f"{path}: not valid JSON") from None
    if not isinstance(d, dict):
        raise HymoeError(f"{path}: not a JSON object")
    for key, (ok, what) in _GENERATION_FIELDS.items():
        if key in d and not ok(d[key]):
            raise HymoeError(f"{path}: {key} must be {what}, got {json.dumps(d[key])[:40]}")
    return d
