"""`hymoe generate|chat|serve|eval|convert|inspect|bench`: the command line. User errors print one line and exit 1 (--debug: traceback)."""
from __future__ import annotations

import argparse
import json
import sys

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
    p.add_argument("--threads", type=int, help="CPU threads for the native experts (default: all cores)")
    p.add_argument("--gpu-experts", default="0", metavar="N|SIZE",
                   help="with --placement hybrid: also keep N experts per layer on the GPU, or as many as a "
                        "budget holds (e.g. 4GiB); the most used per --expert-stats, else spread evenly")
    p.add_argument("--expert-stats", metavar="FILE", help="routing statistics from `hymoe calibrate`")
    p.add_argument("--defer-experts", type=int, default=0, metavar="K",
                   help="compute each token's K lowest-weighted CPU experts during the next layer (default: 0, off)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hymoe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete a prompt")
    _add_model_args(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-ids", help="comma-separated token ids")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    g.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    _add_sampling_args(g, 64)
    c = sub.add_parser("chat", help="interactive chat (/reset, /exit)")
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
    ins = sub.add_parser("inspect", help="architecture, parameters, formats and memory of a model")
    ins.add_argument("model", nargs="?", help="HF model directory or .gguf file (default: the bundled demo model)")
    ins.add_argument("--placement", default="cpu", help="cpu, hybrid, layers:N or gpu (see generate --help)")
    ins.add_argument("--dtype", help="compute dtype of the non-expert weights (default: the checkpoint's)")
    ins.add_argument("--max-context", type=int, help="KV cache length in tokens (default: 4096)")
    ins.add_argument("--dense-format", metavar="FMT", help="price non-expert linears quantized at load (see generate)")
    ins.add_argument("--json", action="store_true", help="print one JSON object")
    ins.add_argument("--debug", action="store_true", help="show tracebacks")
    sv = sub.add_parser("serve", help="OpenAI- and Ollama-compatible HTTP server with continuous batching")
    _add_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /api")
    sv.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (KV slots)")
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503 + Retry-After")
    sv.add_argument("--name", help="model name clients use (default: the model's directory or file name)")
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
    ep.add_argument("--context", type=int, default=512, help="window length in tokens (default: 512)")
    ep.add_argument("--stride", type=int, help="tokens scored per window after the first (default: context/2)")
    ep.add_argument("--max-tokens", type=int, help="score only the first N tokens of the text")
    ep.add_argument("--json", action="store_true", help='print {"ppl", "tokens"} on the last line')
    b = sub.add_parser("bench", help="benchmarks (JSON with --json)")
    bsub = b.add_subparsers(dest="bench", required=True)
    be = bsub.add_parser("experts", help="one MoE layer of a real model's shape on random weights")
    be.add_argument("--shape", default="qwen3-30b-a3b", help="deepseek-v3, qwen3-30b-a3b or mixtral-8x7b")
    be.add_argument("--format", default="Q4_K", help="expert weight format (GGUF type name)")
    be.add_argument("--batch", default="1", help="tokens per call; a comma list runs several")
    be.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    be.add_argument("--backend", default="native", choices=["native", "torch", "llama.cpp"],
                    help="llama.cpp: its own MoE graph (ggml) on the same blocks, the peer")
    be.add_argument("--isa", choices=["generic", "avx2", "avx512"], help="force a kernel path")
    be.add_argument("--max-gb", type=float, default=8.0, help="memory for one layer's experts")
    be.add_argument("--json", action="store_true", help="print one JSON object (a list for several batches)")
    be.add_argument("--debug", action="store_true", help="show tracebacks")
    b2 = bsub.add_parser("e2e", help="prefill and decode tokens/s of a model per placement")
    b2.add_argument("model", nargs="?", help="HF model directory or .gguf file (default: the bundled demo model)")
    b2.add_argument("--placement", default="cpu,hybrid", help="comma list of placements (default: cpu,hybrid)")
    b2.add_argument("--prompt-tokens", type=int, default=128)
    b2.add_argument("--gen-tokens", type=int, default=32)
    b2.add_argument("--threads", type=int, help="CPU threads for the native experts (default: all cores)")
    b2.add_argument("--dtype", help="compute dtype (default: the checkpoint's)")
    b2.add_argument("--gpu-experts", default="0", metavar="N|SIZE", help="hybrid also keeps hot experts on the GPU")
    b2.add_argument("--defer-experts", type=int, default=0, metavar="K", help="expert deferral (see generate --help)")
    b2.add_argument("--random", metavar="SHAPE", help="instead of a model: random weights at a real model's full "
                    "width (deepseek-v3, qwen3-30b-a3b)")
    b2.add_argument("--layers", type=int, default=4, help="layers of the --random model (default: 4)")
    b2.add_argument("--experts-type", default="Q4_K", help="routed experts' format in the --random model")
    b2.add_argument("--dense-type", help="the --random model's other matrices as blocks of this format "
                    "(default: bf16)")
    b2.add_argument("--dense-format", metavar="FMT", help="quantize the non-expert linears at load (see generate)")
    b2.add_argument("--peer", choices=["llama.cpp"], help="also run llama.cpp (llama-cpp-python) on the same GGUF "
                    "file and threads, in the same run, and report hymoe's ratios to it")
    b2.add_argument("--rounds", type=int, default=1, help="time each placement (and the peer after it) this many "
                    "times and report medians (default: 1)")
    b2.add_argument("--json", action="store_true", help="print a JSON list, one object per placement")
    b2.add_argument("--debug", action="store_true", help="show tracebacks")
    bp = bsub.add_parser("prefill", help="prompt length from which streaming experts to the GPU beats the CPU")
    bp.add_argument("model", nargs="?", help="HF model directory or .gguf file (default: the bundled demo model)")
    bp.add_argument("--tokens", default="64,256,1024", help="comma list of prompt lengths")
    bp.add_argument("--threads", type=int, help="CPU threads for the native experts (default: all cores)")
    bp.add_argument("--dtype", help="compute dtype (default: the checkpoint's)")
    bp.add_argument("--random", metavar="SHAPE", help="random weights at a real model's full width (see bench e2e)")
    bp.add_argument("--layers", type=int, default=4, help="layers of the --random model (default: 4)")
    bp.add_argument("--experts-type", default="Q4_K", help="routed experts' format in the --random model")
    bp.add_argument("--json", action="store_true", help="print a JSON list, one object per prompt length")
    bp.add_argument("--debug", action="store_true", help="show tracebacks")
    bg = bsub.add_parser("gguf", help="write a GGUF file of a real model's shape with random weights (for e2e)")
    bg.add_argument("out", help="output .gguf file")
    bg.add_argument("--shape", default="qwen3-30b-a3b", help="deepseek-v3 or qwen3-30b-a3b")
    bg.add_argument("--layers", type=int, default=4)
    bg.add_argument("--experts", type=int, help="routed experts per layer (default: the model's)")
    bg.add_argument("--vocab", type=int, help="vocabulary size (default: the model's)")
    bg.add_argument("--experts-type", default="Q4_K", help="routed experts' format")
    bg.add_argument("--dense-type", default="Q4_K", help="format of the other matrices (norms, routers stay F32)")
    bg.add_argument("--debug", action="store_true", help="show tracebacks")
    bs = bsub.add_parser("serve", help="aggregate and per-user decode tokens/s with N users at once")
    _add_model_args(bs)
    bs.add_argument("--users", default="1,2,4,8", help="comma list of concurrent users")
    bs.add_argument("--gen-tokens", type=int, default=64, help="tokens each user decodes")
    bs.add_argument("--json", action="store_true", help="print a JSON list, one object per user count")
    return parser


def _load(args):
    from hymoe.default_model import ensure_default_model
    from hymoe.engine.llm import LLM

    path = args.model or ensure_default_model()
    return LLM(path, dtype=args.dtype, device=args.device, max_context=args.max_context,
               progress=sys.stderr.isatty(), experts=args.experts, experts_format=args.experts_format,
               threads=args.threads, placement=args.placement, gpu_experts=args.gpu_experts,
               expert_stats=args.expert_stats, defer_experts=args.defer_experts,
               gpu_prefill_threshold=args.gpu_prefill_threshold, cuda_graphs=not args.eager,
               dense_format=args.dense_format)


def _sampling(args, llm):
    from hymoe.engine.sampler import SamplingParams

    if args.max_new_tokens < 1:
        raise HymoeError("--max-new-tokens must be at least 1")
    d = llm.generation_defaults
    is_sampled = d.get("do_sample", False)
    temperature = args.temperature if args.temperature is not None else (d.get("temperature", 1.0) if is_sampled else 0.0)
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

    llm = _load(args)
    session = ChatSession(llm, _sampling(args, llm), system=args.system)
    print("hymoe chat: /reset clears the conversation, /exit quits", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            session.reset()
            print("(conversation cleared)")
            continue
        if not line.strip():
            continue
        try:
            session.reply(line, on_text=lambda s: print(s, end="", flush=True))
        except HymoeError as e:
            print(f"\nhymoe: {e}", file=sys.stderr)
        print()


def _counts(text: str, flag: str) -> list[int]:
    """A comma list of counts, each at least 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise HymoeError(f"{flag} must be integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise HymoeError(f"{flag} must be at least 1")
    return values


def cmd_bench(args) -> None:
    if args.bench == "serve":
        return cmd_bench_serve(args)
    if args.bench == "e2e":
        return cmd_bench_e2e(args)
    if args.bench == "prefill":
        return cmd_bench_prefill(args)
    if args.bench == "gguf":
        return cmd_bench_gguf(args)
    from hymoe.bench.experts import bench_experts
    from hymoe.experts import native

    if args.isa:
        native.set_isa(args.isa)
    batches = _counts(args.batch, "--batch")
    results = bench_experts(args.shape, args.format.upper(), batches, args.threads, args.backend, args.max_gb)
    for r in results:
        batch = r["batch"]
        print(f"{r['shape']} {r['format']} batch {batch:>4} ({r['backend']}, {r['isa']}, {r['threads']} threads): "
              f"{r['layer_ms']:.3f} ms/layer, weights {r['weight_gbps']:.1f} GB/s of {r['bandwidth_gbps']:.1f} "
              f"({r['fraction']:.0%}), {r['tokens_per_s']:.0f} tok/s, {r['gflops']:.0f} GFLOP/s "
              f"({r['gemm_fraction']:.0%} of bf16 GEMM {r['gemm_gflops']:.0f})", file=sys.stderr)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))


def cmd_bench_e2e(args) -> None:
    from hymoe.bench.e2e import bench_e2e

    if args.prompt_tokens < 1 or args.gen_tokens < 2:
        raise HymoeError("--prompt-tokens must be at least 1 and --gen-tokens at least 2")
    model = _bench_model(args)
    rows = bench_e2e(model, args.placement.split(","), args.prompt_tokens, args.gen_tokens, args.threads, args.dtype,
                     args.gpu_experts, args.defer_experts, args.dense_format, args.peer, args.rounds)
    pct = lambda v: "n/a" if v is None else f"{v:.0%}"  # noqa: E731
    for r in rows:
        if r["placement"] == "llama.cpp":
            print(f"llama.cpp ({r['engine']}, {r['threads']} threads): prefill {r['prefill_tokens_per_s']:.1f} tok/s, "
                  f"decode {r['decode_tokens_per_s']:.1f} tok/s", file=sys.stderr)
            continue
        bound = (f", bandwidth allows {r['decode_bound_tokens_per_s']:.0f} (reads at "
                 f"{r['decode_bandwidth_fraction']:.0%})") if r["decode_bound_tokens_per_s"] else ""
        if "decode_vs_peer" in r:
            bound += f", {r['prefill_vs_peer']:.2f}x / {r['decode_vs_peer']:.2f}x llama.cpp"
        print(f"{r['placement']:>8} ({r['device']}, {r['experts']} experts): prefill {r['prefill_tokens_per_s']:.1f} "
              f"tok/s, decode {r['decode_tokens_per_s']:.1f} tok/s{bound}; experts busy {pct(r['experts_busy'])}, "
              f"CPU {pct(r['cpu_busy'])}, GPU {pct(r['gpu_busy'])}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows))


def cmd_bench_gguf(args) -> None:
    from hymoe.bench.random_gguf import write_random_gguf

    if args.layers < 1:
        raise HymoeError("--layers must be at least 1")
    path = write_random_gguf(args.out, args.shape, args.layers, args.experts_type, args.dense_type, args.experts,
                             args.vocab, progress=sys.stderr.isatty())
    print(path)


def _bench_model(args):
    """The model a benchmark runs: a path, the demo model, or --random weights of a real shape."""
    from hymoe.default_model import ensure_default_model

    if not args.random:
        return args.model or ensure_default_model()
    from hymoe.bench.synthetic import random_model

    if args.model:
        raise HymoeError("give a model or --random, not both")
    return random_model(args.random, args.layers, args.experts_type, getattr(args, "dense_type", None))


def cmd_bench_prefill(args) -> None:
    from hymoe.bench.prefill import bench_prefill

    lengths = _counts(args.tokens, "--tokens")
    rows = bench_prefill(_bench_model(args), lengths, args.threads, args.dtype)
    for r in rows:
        print(f"{r['prompt_tokens']:>6} tokens: experts on the CPU {r['cpu_experts_tokens_per_s']:.0f} tok/s, "
              f"streamed to {r['gpu']} {r['gpu_stream_tokens_per_s']:.0f} tok/s", file=sys.stderr)
    print(f"threshold: {rows[0]['threshold'] or 'none of these lengths'}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows))


def cmd_bench_serve(args) -> None:
    from hymoe.bench.serve import bench_serve

    users = _counts(args.users, "--users")
    if args.gen_tokens < 2:
        raise HymoeError("--gen-tokens must be at least 2")
    args.max_context = args.max_context or 512
    results = bench_serve(_load(args), users, args.gen_tokens)
    base = results[0]["aggregate_tokens_per_s"]
    for r in results:
        print(f"{r['users']} users: {r['aggregate_tokens_per_s']:.1f} tok/s aggregate "
              f"({r['aggregate_tokens_per_s'] / base:.2f}x of {results[0]['users']}), "
              f"{r['per_user_tokens_per_s']:.1f} tok/s per user, TTFT {r['ttft_ms']:.0f} ms "
              f"(max {r['ttft_max_ms']:.0f})", file=sys.stderr)
    if args.json:
        print(json.dumps(results))


def cmd_convert(args) -> None:
    from hymoe.convert import convert

    out = convert(args.hf_dir, args.out, args.type, args.experts_type, args.attn_type, progress=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


def cmd_inspect(args) -> None:
    from hymoe.default_model import ensure_default_model
    from hymoe.inspect import inspect_model, report

    d = inspect_model(args.model or ensure_default_model(), args.placement, args.dtype, args.max_context,
                      args.dense_format)
    print(json.dumps(d) if args.json else report(d))


def cmd_serve(args) -> None:
    from pathlib import Path

    import uvicorn

    from hymoe.default_model import ensure_default_model
    from hymoe.serve.app import Server, build_app

    if args.max_batch < 1 or args.max_queue < 0:
        raise HymoeError("--max-batch must be at least 1 and --max-queue at least 0")
    llm = _load(args)
    path = Path(args.model or ensure_default_model())
    name = args.name or ("hymoe-demo" if not args.model else path.stem if path.is_file() else path.name)
    server = Server(llm, name, api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue)
    print(f"hymoe: serving {name} on http://{args.host}:{args.port} (OpenAI /v1, Ollama /api, chat page /)",
          file=sys.stderr)
    uvicorn.run(build_app(server), host=args.host, port=args.port, log_level="warning")
    server.scheduler.close()


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
    from hymoe.eval.ppl import llm_scorer, perplexity

    text = _read_text(args.text)
    args.max_context = max(args.max_context or 0, args.context)
    llm = _load(args)
    if llm.tokenizer is None:
        raise HymoeError("this model has no tokenizer")
    if args.context > llm.config.max_position_embeddings:
        raise HymoeError(f"--context {args.context} exceeds the model's {llm.config.max_position_embeddings} positions")
    ids = llm.tokenizer.encode(text)[: args.max_tokens]
    ppl, n = perplexity(llm_scorer(llm), ids, args.context, args.stride)
    print(f"perplexity {ppl:.4f} over {n} tokens (context {args.context})", file=sys.stderr)
    if args.json:
        print(json.dumps({"ppl": round(ppl, 6), "tokens": n, "context": args.context}))


COMMANDS = {"generate": cmd_generate, "eval": cmd_eval, "calibrate": cmd_calibrate, "serve": cmd_serve, "chat": cmd_chat, "bench": cmd_bench, "convert": cmd_convert,
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
