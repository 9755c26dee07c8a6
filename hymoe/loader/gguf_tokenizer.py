"""Tokenizers stored in GGUF metadata, as llama.cpp defines them, built with the `tokenizers` library.

- `gpt2` (byte-level BPE): vocabulary, merges and the pre-tokenizer named by `tokenizer.ggml.pre`,
  whose split regexes are llama.cpp's (a sequence of isolating splits, then the byte mapping);
- `llama` (SentencePiece): pieces and scores become BPE merges ranked by the merged piece's score,
  with byte fallback, which is how llama.cpp's SPM tokenizer merges.
Token types CONTROL and USER_DEFINED become added tokens. The inverse (`write_tokenizer`) stores a
Hugging Face byte-level BPE tokenizer for `hymoe convert`.
"""
from __future__ import annotations

import json
import logging

import gguf
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as RawTokenizer

from hymoe.errors import HymoeError

log = logging.getLogger("hymoe")
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp's pre-tokenizer name -> its split regexes, applied in turn
PRE_REGEXES = {
    "gpt-2": (_GPT2,),
    "llama-bpe": (_LLAMA3,),
    "llama3": (_LLAMA3,),
    "qwen2": (_LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}"),),
    "deepseek-v3": (r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+",
                    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
}
_IGNORE_MERGES = ("llama-bpe", "llama3")  # llama.cpp takes a whole word found in the vocabulary as is
_CONTROL, _USER = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)


def _bpe_from_gguf(meta: dict, tokens: list[str]) -> RawTokenizer:
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_REGEXES:
        log.warning("hymoe: GGUF pre-tokenizer %r is not known to hymoe; splitting like GPT-2", pre)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    tok = RawTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in _IGNORE_MERGES))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_REGEXES.get(pre, (_GPT2,))]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _spm_from_gguf(meta: dict, tokens: list[str]) -> RawTokenizer:
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    merges = []
    for piece, i in vocab.items():  # every way to build a piece from two pieces, ranked by its score
        for cut in range(1, len(piece)):
            a, b = piece[:cut], piece[cut:]
            if a in vocab and b in vocab:
                merges.append((-scores[i], i, a, b))
    merges.sort()
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    tok = RawTokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in merges], byte_fallback=True,
                                  unk_token=tokens[unk] if unk is not None else None, fuse_unk=True))
    steps = [normalizers.Replace(" ", "▁")]
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def tokenizer_from_gguf(meta: dict, path):
    """A transformers PreTrainedTokenizerFast, or None when the file carries no tokenizer."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if kind is None or not tokens:
        return None
    lists = {k: meta.get(f"tokenizer.ggml.{k}") or [] for k in ("tokens", "merges", "token_type", "scores")}
    kinds = {"tokens": str, "merges": str, "token_type": int, "scores": (int, float)}
    for k, v in lists.items():
        if not isinstance(v, list) or not all(isinstance(x, kinds[k]) for x in v):
            raise HymoeError(f"{path}: GGUF tokenizer.ggml.{k} is not a list of {k}")
    if not isinstance(meta.get("tokenizer.chat_template", ""), str):
        raise HymoeError(f"{path}: GGUF tokenizer.chat_template is not a string")
    try:
        return _build(meta, tokens, kind, path)
    except HymoeError:
        raise
    except Exception as e:  # the tokenizers library rejects inconsistent vocabularies in its own words
        raise HymoeError(f"{path}: the GGUF tokenizer is inconsistent ({str(e).splitlines()[0][:200]})") from None


def _build(meta: dict, tokens: list[str], kind: str, path):
    if kind == "gpt2":
        raw = _bpe_from_gguf(meta, tokens)
    elif kind == "llama":
        raw = _spm_from_gguf(meta, tokens)
    else:
        raise HymoeError(f"{path}: unsupported GGUF tokenizer model {kind!r} (supported: gpt2, llama)")
    types = meta.get("tokenizer.ggml.token_type") or []
    raw.add_tokens([AddedToken(tokens[i], special=t == _CONTROL, normalized=False)
                    for i, t in enumerate(types) if t in (_CONTROL, _USER)])

    def special(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    bos = special("bos")
    if bos and meta.get("tokenizer.ggml.add_bos_token", kind == "llama"):
        raw.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tokens.index(bos))])
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=bos, eos_token=special("eos"),
                                   unk_token=special("unknown"), pad_token=special("padding"),
                                   chat_template=meta.get("tokenizer.chat_template"))


def _pre_name(pre: dict | None) -> str:
    """Name the HF pre-tokenizer the way llama.cpp does, or refuse."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre and pre.get("type") == "Sequence":
        splits = [p["pattern"]["Regex"] for p in pre["pretokenizers"] if p["type"] == "Split"]
        for name, regexes in PRE_REGEXES.items():
            if tuple(splits) == regexes:
                return name
    raise HymoeError(f"hymoe convert knows no llama.cpp pre-tokenizer matching {json.dumps(pre)[:200]}")


def write_tokenizer(w: gguf.GGUFWriter, hf_tokenizer, vocab_size: int) -> None:
    """A Hugging Face byte-level BPE tokenizer -> tokenizer.ggml.* keys."""
    spec = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise HymoeError(f"hymoe convert writes byte-level BPE tokenizers; this one is {spec['model']['type']}")
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_name(spec.get("pre_tokenizer")))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, tok_id in (("bos", hf_tokenizer.bos_token_id), ("eos", hf_tokenizer.eos_token_id),
                        ("pad", hf_tokenizer.pad_token_id), ("unk", hf_tokenizer.unk_token_id)):
        if tok_id is not None:
            getattr(w, f"add_{key}_token_id")(tok_id)
    bos = hf_tokenizer.bos_token_id
    w.add_add_bos_token(bos is not None and hf_tokenizer.encode("a")[:1] == [bos])
    if getattr(hf_tokenizer, "chat_template", None):
        w.add_chat_template(hf_tokenizer.chat_template)
