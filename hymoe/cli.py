"""`hymoe generate|chat|serve|eval|convert|inspect|list|bench`: the command line. User errors print one line and exit 1 (--debug: traceback)."""
from __future__ import annotations

import argparse
import json
import sys

from hymoe import __version__
from hymoe.bench.cli import add_bench_parsers, cmd_bench
from hymoe.errors import HymoeError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="HF model directory or .gguf file (default: the bundled demo model)")
    p.add_argument("--dtype", help="compute dtype: float32, bfloat16, float16 (default: the checkpoint's)")
    p.add_argument("--device", help="device for the dense part, e.g. cpu or cuda (default: by placement)")
    p.add_argument("--placement", help="cpu; hybrid: dense part on the GPU overlapped with routed experts on the "
                   "CPU; layers:N: first N whole layers on the GPU; gpu: all on the GPU (without CUDA the CPU "
                   "stands in for the GPU) (default: hybrid with a GPU, else cpu)")
    p.add_argument("--max-context", type=int, help="KV cache length in tokens (default: 4096)")
    p.add_argument("--experts", default="auto", choices=["auto", "native", "torch"],
                   help="routed-expert backend (default: native CPU kernels when built)")
    p.add_argument("--experts-format", help="quantize experts at load: Q8_0, Q4_0, TQ2_0, TQ1_0 (default: as loaded)")
    p.add_argument("--dense-format", metavar="FMT", help="quantize the non-expert linears at load: Q8_0, Q4_K, "
                   "Q6_K, ... (default: as stored: a GGUF's block formats, an HF checkpoint's floats)")
    p.add_argument("--gpu-dense-kernel", choices=["auto", "dequant", "int4pack"], help="what multiplies Q4_K "
                   "dense weights on a GPU: int4pack (torch's int4 weight-only matmul, 3x faster decode on an "
                   "H200) or dequant (torch dequantizes the blocks, then matmul: any format, ROCm too) "
                   "(default: auto: int4pack on CUDA from sm80, else dequant)")
    p.add_argument("--kv-dtype", help="KV cache dtype: float32, bfloat16, float16 (default: the compute dtype; "
                   "float16 for a GGUF file computed on the CPU, as llama.cpp)")
    p.add_argument("--kv-memory", metavar="SIZE|FRACTION", help="KV pool of a server or chat: a size (8GiB) or a "
                   "fraction of free memory (0.5) (default: --max-batch sequences of the whole context)")
    p.add_argument("--kv-block-size", type=int, metavar="N", help="positions per KV block (default: 64)")
    p.add_argument("--kv-policy", metavar="P", help="what each sequence's KV cache keeps: full; sink-window:S,W "
                   "(the first S positions and the last W); h2o:B (B positions: the last B/2 and the older ones "
                   "with the most attention weight); topk-blocks:K (all; each query reads K blocks) (default: full)")
    p.add_argument("--threads", type=int, help="CPU threads for the native experts (default: all cores)")
    p.add_argument("--numa", metavar="off|auto|virtual:N", help="split every expert's rows across NUMA nodes, "
                   "each node's threads computing its own (auto: this machine's nodes; virtual:N: N pretend "
                   "nodes) (default: off)")
    p.add_argument("--gpu-experts", default="0", metavar="N|SIZE",
                   help="with --placement hybrid: also keep N experts per layer on the GPU, or as many as a "
                        "budget holds (e.g. 4GiB); the most used per --expert-stats, else spread evenly")
    p.add_argument("--expert-stats", metavar="FILE", help="routing statistics from `hymoe calibrate`")
    p.add_argument("--defer-experts", type=int, default=0, metavar="K",
                   help="compute each token's K lowest-weighted CPU experts during the next layer (default: 0, off)")
    p.add_argument("--mmap", action="store_true", help="the CPU computes from the GGUF file's mapping (pages "
                   "shared with other processes, no copy at load) instead of copies on 2 MiB pages (up to ~6%% "
                   "faster decode)")
    p.add_argument("--eager", action="store_true", help="decode without CUDA graphs")
    p.add_argument("--gpu-prefill-threshold", type=int, default=0, metavar="T",
                   help="hybrid: prompts of T tokens or more stream expert weights to the GPU (default: 0, off)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_sampling_args(p: argparse.ArgumentParser, max_new: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: generation_config)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")


def _add_quality_parsers(sub) -> None:
    cal = sub.add_parser("calibrate", help="routing statistics over a text (which experts to keep on the GPU)")
    _add_model_args(cal)
    cal.add_argument("--prompts", required=True, metavar="FILE", help="UTF-8 text routed through the model")
    cal.add_argument("--out", default="expert-stats.json", help="statistics file (default: expert-stats.json)")
    cal.add_argument("--context", type=int, default=512, help="tokens per forward pass (default: 512)")
    cal.add_argument("--max-tokens", type=int, help="route only the first N tokens of the text")
    ev = sub.add_parser("eval", help="quality evaluations")
    evsub = ev.add_subparsers(dest="eval", required=True)
    ep = evsub.add_parser("ppl", help="perplexity of a text, with a sliding window")
    _add_model_args(ep)
    ep.add_argument("--text", required=True, help="UTF-8 text file")
    ep.add_argument("--context", type=int, help="window length in tokens (default: the model's trained context, "
                    "at most 4096; the demo model: 256)")
    ep.add_argument("--stride", type=int, help="tokens scored per window after the first (default: context/2)")
    ep.add_argument("--max-tokens", type=int, help="score only the first N tokens of the text")
    ep.add_argument("--json", action="store_true", help='print {"ppl", "tokens"} on the last line')
    ek = evsub.add_parser("kv", help="a KV retention policy against the full cache: perplexity, top-1 agreement, "
                          "KV bytes", description="Each window of the text is read in chunks of --chunk tokens "
                          "per forward pass, once with the full cache and once under --policy, which acts between "
                          "chunks (later tokens see only what it kept); both are scored on the same tokens.")
    _add_model_args(ek)
    ek.add_argument("--policy", required=True, help="sink-window:S,W, h2o:B or topk-blocks:K (see generate --help)")
    ek.add_argument("--text", required=True, help="UTF-8 text file")
    ek.add_argument("--context", type=int, help="window length in tokens (default: as eval ppl)")
    ek.add_argument("--stride", type=int, help="tokens scored per window after the first (default: context/2)")
    ek.add_argument("--chunk", type=int, default=32, help="tokens per forward pass; the policy acts after each "
                    "(default: 32)")
    ek.add_argument("--max-tokens", type=int, help="score only the first N tokens of the text")
    ek.add_argument("--passkeys", type=int, default=0, metavar="N", help="also N windows of --context tokens of "
                    "the text with a word hidden early and asked for at the end: how often each cache answers "
                    "(a model trained for it: scripts/train_long_context.py)")
    ek.add_argument("--json", action="store_true", help='print {"policy", "context", "ppl_full", "ppl_policy", '
                    '"top1_agreement", "kv_bytes_full", "kv_bytes_policy", ...} on the last line')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hymoe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hymoe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete a prompt")
    _add_model_args(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-ids", help="comma-separated token ids")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    g.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    _add_sampling_args(g, 64)
    c = sub.add_parser("chat", help="interactive chat (/help lists its commands; Ctrl-C stops a reply)")
    _add_model_args(c)
    c.add_argument("--system", help="system prompt")
    _add_sampling_args(c, 256)
    cv = sub.add_parser("convert", help="convert a Hugging Face model directory to GGUF")
    cv.add_argument("hf_dir")
    cv.add_argument("out", help="output .gguf file")
    cv.add_argument("--type", default="Q8_0", help="weight type: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, TQ2_0, IQ1_S")
    cv.add_argument("--experts-type", help="type for the routed experts (default: --type)")
    cv.add_argument("--attn-type", help="type for attention weights (default: --type)")
    cv.add_argument("--debug", action="store_true", help="show tracebacks")
    ls = sub.add_parser("list", help="models found in the local Hugging Face cache (hymoe downloads nothing)")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.add_argument("--debug", action="store_true", help="show tracebacks")
    ins = sub.add_parser("inspect", help="architecture, parameters, formats and memory of a model")
    ins.add_argument("model", nargs="?", help="HF model directory or .gguf file (default: the bundled demo model)")
    ins.add_argument("--placement", default="cpu", help="cpu, hybrid, layers:N or gpu (see generate --help)")
    ins.add_argument("--dtype", help="compute dtype of the non-expert weights (default: the checkpoint's)")
    ins.add_argument("--max-context", type=int, help="KV cache length in tokens (default: 4096)")
    ins.add_argument("--dense-format", metavar="FMT", help="price non-expert linears quantized at load (see generate)")
    ins.add_argument("--numa", metavar="off|auto|virtual:N", help="host memory per NUMA node (see generate)")
    ins.add_argument("--gpu-dense-kernel", choices=["auto", "dequant", "int4pack"], default="auto",
                     help="price Q4_K dense linears on the GPU for this kernel (see generate; auto prices "
                          "int4pack, as on a CUDA GPU)")
    ins.add_argument("--json", action="store_true", help="print one JSON object")
    ins.add_argument("--debug", action="store_true", help="show tracebacks")
    sv = sub.add_parser("serve", help="OpenAI- and Ollama-compatible HTTP server with continuous batching")
    _add_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /api")
    sv.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (KV slots)")
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503 + Retry-After")
    sv.add_argument("--max-request-bytes", type=int, default=8 << 20, metavar="N",
                    help="refuse request bodies over N bytes with 413 (default: 8 MiB)")
    sv.add_argument("--name", help="model name clients use (default: the model's directory or file name)")
    sv.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS",
                    help="a request's headers and body must arrive within this time, else 408 (default: 30)")
    sv.add_argument("--quiet", action="store_true", help="no access log line per request on stderr")
    _add_quality_parsers(sub)
    add_bench_parsers(sub, _add_model_args)
    return parser


def _load(args):
    from hymoe.engine.llm import load_from_args

    return load_from_args(args)


def _sampling(args, llm):
    from hymoe.engine.sampler import SamplingParams

    if args.max_new_tokens < 1:
        raise HymoeError("--max-new-tokens must be at least 1")
    d = llm.generation_defaults
    is_sampled = d.get("do_sample", False)
    default = 1.0 if d.get("temperature") is None else d["temperature"]  # a null temperature means the default
    temperature = args.temperature if args.temperature is not None else (default if is_sampled else 0.0)
    if temperature < 0:
        raise HymoeError("--temperature must be >= 0")
    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=temperature,
        top_k=args.top_k if args.top_k is not None else (d.get("top_k", 0) or 0 if is_sampled else 0),
        top_p=args.top_p if args.top_p is not None else (d.get("top_p", 1.0) or 1.0 if is_sampled else 1.0),
        repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
        is_eos_ignored=args.ignore_eos)


def _prompt_ids(args, llm) -> list[int]:
    if args.prompt_ids is not None:
        try:
            return [int(x) for x in args.prompt_ids.split(",") if x.strip()]
        except ValueError:
            raise HymoeError(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}") from None
    if llm.tokenizer is None:
        raise HymoeError("this model has no tokenizer; pass --prompt-ids")
    if args.chat:
        return llm.tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
    return llm.tokenizer.encode(args.prompt)


def cmd_generate(args) -> None:
    llm = _load(args)
    params = _sampling(args, llm)
    ids = _prompt_ids(args, llm)
    out, timings = llm.generate_batch([ids], params)
    c = out[0]
    if not args.json:
        print(c.text if llm.tokenizer is not None else " ".join(map(str, c.token_ids)))
        return
    print(json.dumps({
        "text": c.text, "token_ids": c.token_ids, "prompt_tokens": len(ids),
        "finish_reason": c.finish_reason,
        "prefill_tokens_per_s": round(timings.prefill_tokens_per_s, 2),
        "decode_tokens_per_s": round(timings.decode_tokens_per_s, 2),
    }))


def cmd_chat(args) -> None:
    from hymoe.engine.chat import ChatSession
    from hymoe.repl import run

    llm = _load(args)
    run(ChatSession(llm, _sampling(args, llm), system=args.system))


def cmd_convert(args) -> None:
    from hymoe.convert import convert

    out = convert(args.hf_dir, args.out, args.type, args.experts_type, args.attn_type, progress=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


def cmd_inspect(args) -> None:
    from hymoe.default_model import ensure_default_model
    from hymoe.inspect import inspect_model, report

    d = inspect_model(args.model or ensure_default_model(), args.placement, args.dtype, args.max_context,
                      args.dense_format, args.numa, args.gpu_dense_kernel)
    print(json.dumps(d) if args.json else report(d))


def cmd_serve(args) -> None:
    from pathlib import Path

    import uvicorn

    from hymoe.default_model import ensure_default_model
    from hymoe.serve import timeouts
    from hymoe.serve.app import Server, build_app

    if args.request_timeout <= 0:
        raise HymoeError("--request-timeout must be positive")
    if args.max_batch < 1 or args.max_queue < 0 or args.max_request_bytes < 1:
        raise HymoeError("--max-batch and --max-request-bytes must be at least 1 and --max-queue at least 0")
    sock = _listen(args.host, args.port)  # before the model loads: a bad or busy port fails at once
    llm = _load(args)
    path = Path(args.model or ensure_default_model())
    name = args.name or ("hymoe-demo" if not args.model else path.stem if path.is_file() else path.name)
    server = Server(llm, name, api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                    max_request_bytes=args.max_request_bytes, quiet=args.quiet)
    print(f"hymoe: serving {name} on http://{args.host}:{args.port} (OpenAI /v1, Ollama /api, chat page /)",
          file=sys.stderr)
    try:
        uvicorn.Server(timeouts.config(build_app(server), args.request_timeout, log_level="warning")).run(sockets=[sock])
    finally:  # uvicorn raises ctrl-C's KeyboardInterrupt again once it has shut down
        server.scheduler.close()


def _listen(host: str, port: int):
    import socket

    if not 0 < port < 65536:
        raise HymoeError(f"--port {port}: a TCP port is 1 to 65535")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        raise HymoeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def _read_text(name: str) -> str:
    from pathlib import Path

    path = Path(name)
    if not path.is_file():
        raise HymoeError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HymoeError(f"{path}: not UTF-8 text") from None


def cmd_calibrate(args) -> None:
    from hymoe.calibrate import calibrate

    text = _read_text(args.prompts)
    if args.context < 1:
        raise HymoeError("--context must be at least 1")
    args.max_context = max(args.max_context or 0, args.context + 1)
    llm = _load(args)
    if llm.tokenizer is None:
        raise HymoeError("this model has no tokenizer")
    stats = calibrate(llm, llm.tokenizer.encode(text)[: args.max_tokens], args.context)
    with open(args.out, "w") as f:
        json.dump(stats, f)
    print(f"routed {stats['tokens']} tokens through {len(stats['layers'])} MoE layers; wrote {args.out}",
          file=sys.stderr)


def cmd_eval(args) -> None:
    from hymoe.default_model import ensure_default_model
    from hymoe.eval.ppl import llm_scorer, perplexity, trained_context

    text = _read_text(args.text)
    args.model = args.model or str(ensure_default_model())
    args.max_context = max(args.max_context or 0, args.context or 0) or None
    llm = _load(args)
    args.context = args.context or trained_context(args.model, llm.config)
    if llm.tokenizer is None:
        raise HymoeError("this model has no tokenizer")
    if args.context > llm.config.max_position_embeddings:
        raise HymoeError(f"--context {args.context} exceeds the model's {llm.config.max_position_embeddings} positions")
    ids = llm.tokenizer.encode(text)[: args.max_tokens]
    if args.eval == "kv":
        return _eval_kv(llm, ids, args)
    ppl, n = perplexity(llm_scorer(llm), ids, args.context, args.stride, progress=sys.stderr.isatty())
    print(f"perplexity {ppl:.4f} over {n} tokens (context {args.context})", file=sys.stderr)
    if args.json:
        print(json.dumps({"ppl": round(ppl, 6), "tokens": n, "context": args.context}))


def _eval_kv(llm, ids: list[int], args) -> None:
    from hymoe.eval.kv import eval_kv

    if args.passkeys < 0:
        raise HymoeError(f"--passkeys {args.passkeys}: a count, 0 or more")
    r = eval_kv(llm, ids, args.policy, args.context, args.stride, args.chunk, progress=sys.stderr.isatty(),
                passkeys=args.passkeys)
    print(f"{r['policy']} over {r['tokens']} tokens (context {r['context']}, chunks of {r['chunk']}): perplexity "
          f"{r['ppl_full']:.4f} full, {r['ppl_policy']:.4f} under the policy; top-1 agreement "
          f"{r['top1_agreement']:.1%}; KV {r['kv_bytes_full']} bytes full, {r['kv_bytes_policy']} under the policy",
          file=sys.stderr)
    if "passkeys" in r:
        print(f"passkeys answered: {r['passkey_full']:.1%} full, {r['passkey_policy']:.1%} under the policy "
              f"({r['passkeys']} windows of {r['context']} tokens)", file=sys.stderr)
    if args.json:
        print(json.dumps(r))


def cmd_list(args) -> None:
    from hymoe.hub import cache_dir, cached_models

    rows = cached_models()
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{len(rows)} models in {cache_dir()}", file=sys.stderr)
    for r in rows:
        files = f"  ({', '.join(r['files'])})" if r["files"] else ""
        print(f"{r['name']:<48} {r['kind']:<5} {r['size_bytes'] / 1e9:8.2f} GB{files}")


COMMANDS = {"generate": cmd_generate, "eval": cmd_eval, "calibrate": cmd_calibrate, "serve": cmd_serve, "chat": cmd_chat, "bench": cmd_bench, "convert": cmd_convert, "list": cmd_list,
            "inspect": cmd_inspect}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except HymoeError as e:
        if args.debug:
            raise
        print(f"hymoe: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
