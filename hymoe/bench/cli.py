"""`hymoe bench experts|e2e|prefill|context|gguf|serve`: the benchmark commands' arguments and runners
(hymoe/cli.py dispatches here). JSON with --json; figures in docs/."""
from __future__ import annotations

import json
import sys

from hymoe.errors import HymoeError


def add_bench_parsers(sub, add_model_args) -> None:
    b = sub.add_parser("bench", help="benchmarks (JSON with --json)")
    bsub = b.add_subparsers(dest="bench", required=True)
    _experts_parser(bsub)
    _e2e_parser(bsub)
    _context_parser(bsub)
    _other_parsers(bsub, add_model_args)


def _experts_parser(bsub) -> None:
    be = bsub.add_parser("experts", help="one MoE layer of a real model's shape on random weights")
    be.add_argument("--shape", default="qwen3-30b-a3b", help="deepseek-v3, qwen3-30b-a3b or mixtral-8x7b")
    be.add_argument("--format", default="Q4_K", help="expert weight format (GGUF type name)")
    be.add_argument("--batch", default="1", help="tokens per call; a comma list runs several")
    be.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    be.add_argument("--backend", default="native", choices=["native", "torch", "llama.cpp"],
                    help="llama.cpp: its own MoE graph (ggml) on the same blocks, the peer")
    be.add_argument("--isa", choices=["generic", "avx2", "avx512"], help="force a kernel path")
    be.add_argument("--numa", metavar="off|auto|virtual:N", help="the native engine over NUMA nodes (default: off)")
    be.add_argument("--tune", metavar="NAME=VALUE,...", help="override kernel tuning values for this run, to compare "
                    "them (the names: Tuning in hymoe/csrc/common.h)")
    be.add_argument("--max-gb", type=float, default=8.0, help="memory for one layer's experts")
    be.add_argument("--json", action="store_true", help="print one JSON object (a list for several batches)")
    be.add_argument("--debug", action="store_true", help="show tracebacks")


def _e2e_parser(bsub) -> None:
    b2 = bsub.add_parser("e2e", help="prefill and decode tokens/s of a model per placement")
    b2.add_argument("model", nargs="?", help="HF model directory or .gguf file (default: the bundled demo model)")
    b2.add_argument("--placement", default="cpu,hybrid", help="comma list of placements (default: cpu,hybrid)")
    b2.add_argument("--prompt-tokens", type=int, default=128)
    b2.add_argument("--gen-tokens", type=int, default=32)
    b2.add_argument("--threads", type=int, help="CPU threads for the native experts (default: all cores)")
    b2.add_argument("--numa", metavar="off|auto|virtual:N", help="the native engine over NUMA nodes (default: off)")
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


def _context_parser(bsub) -> None:
    bc = bsub.add_parser("context", help="prefill and decode tokens/s, KV bytes and peak memory per context length")
    bc.add_argument("model", nargs="?", help="HF model directory or .gguf file (default: the bundled demo model)")
    bc.add_argument("--tokens", default="1024,4096", help="comma list of prompt lengths (default: 1024,4096)")
    bc.add_argument("--gen-tokens", type=int, default=16, help="tokens decoded after each prompt (default: 16)")
    bc.add_argument("--kv-policy", default="full", metavar="P", help="what the cache keeps: full, sink-window:S,W, "
                    "h2o:B or topk-blocks:K (see generate --help); kv_bytes are then the blocks the row held "
                    "(default: full)")
    bc.add_argument("--placement", default="cpu", help="cpu, gpu or hybrid (default: cpu)")
    bc.add_argument("--threads", type=int, help="CPU threads for the native experts (default: all cores)")
    bc.add_argument("--dtype", help="compute dtype (default: the checkpoint's)")
    bc.add_argument("--kv-dtype", help="cache dtype (default: the placement's)")
    bc.add_argument("--random", metavar="SHAPE", help="random weights at a real model's full width (see bench e2e)")
    bc.add_argument("--layers", type=int, default=2, help="layers of the --random model (default: 2)")
    bc.add_argument("--experts-type", default="Q4_K", help="routed experts' format in the --random model")
    bc.add_argument("--dense-type", help="the --random model's other matrices as blocks of this format")
    bc.add_argument("--json", action="store_true", help="print a JSON list, one object per length")
    bc.add_argument("--debug", action="store_true", help="show tracebacks")


def _other_parsers(bsub, add_model_args) -> None:
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
    add_model_args(bs)
    bs.add_argument("--users", default="1,2,4,8", help="comma list of concurrent users")
    bs.add_argument("--gen-tokens", type=int, default=64, help="tokens each user decodes")
    bs.add_argument("--shared-prefix", type=int, metavar="N", help="instead: time to first token of a request "
                    "sharing its first N tokens with the previous one, against the previous one's")
    bs.add_argument("--soak", type=float, metavar="SECONDS", help="instead: the HTTP server under a steady mixed "
                    "load from --users users (the largest count) for SECONDS, RSS sampled every 10 s")
    bs.add_argument("--response-format", choices=["text", "json_schema"], default="text",
                    help="json_schema: decode tokens/s with and without a JSON schema constraint, alternately, "
                    "and its overhead")
    bs.add_argument("--json", action="store_true", help="print a JSON list, one object per user count")


def _counts(text: str, flag: str) -> list[int]:
    """A comma list of counts, each at least 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise HymoeError(f"{flag} must be integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise HymoeError(f"{flag} must be at least 1")
    return values


def _tuning(text: str) -> dict[str, int]:
    """--tune's NAME=VALUE pairs."""
    out = {}
    for pair in text.split(","):
        name, _, value = pair.partition("=")
        if not name or not value.isdigit():
            raise HymoeError(f"--tune takes NAME=VALUE pairs with VALUE a count, got {pair!r}")
        out[name.strip()] = int(value)
    return out


def cmd_bench(args) -> None:
    if args.bench == "serve":
        return cmd_bench_serve(args)
    if args.bench == "e2e":
        return cmd_bench_e2e(args)
    if args.bench == "prefill":
        return cmd_bench_prefill(args)
    if args.bench == "context":
        return cmd_bench_context(args)
    if args.bench == "gguf":
        return cmd_bench_gguf(args)
    from hymoe.bench.experts import bench_experts
    from hymoe.experts import native

    if args.isa:
        native.set_isa(args.isa)
    tune = _tuning(args.tune) if args.tune else {}
    for name, value in tune.items():
        native.bench_tune(name, value)
    batches = _counts(args.batch, "--batch")
    results = bench_experts(args.shape, args.format.upper(), batches, args.threads, args.backend, args.max_gb,
                            progress=sys.stderr.isatty(), numa=args.numa)
    for r in results:
        r["tune"] = tune  # the kernel tuning values this run changed from their defaults
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
                     args.gpu_experts, args.defer_experts, args.dense_format, args.peer, args.rounds, args.numa)
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


def cmd_bench_context(args) -> None:
    from hymoe.bench.context import bench_context
    from hymoe.engine.llm import load

    lengths = _counts(args.tokens, "--tokens")
    if args.gen_tokens < 2:
        raise HymoeError("--gen-tokens must be at least 2")
    llm = load(_bench_model(args), max_context=max(lengths) + args.gen_tokens + 1, progress=False,
               placement=args.placement, threads=args.threads, dtype=args.dtype, kv_dtype=args.kv_dtype,
               kv_policy=args.kv_policy)
    if max(lengths) + args.gen_tokens > llm.max_context:
        raise HymoeError(f"the model's context holds {llm.max_context} positions; --tokens asks for {max(lengths)} "
                         f"+ {args.gen_tokens}")
    rows = bench_context(llm, lengths, args.gen_tokens, args.kv_policy)
    for r in rows:
        print(f"{r['tokens']:>7} tokens: prefill {r['prefill_tokens_per_s']:.1f} tok/s, decode "
              f"{r['decode_tokens_per_s']:.2f} tok/s, KV {r['kv_bytes'] / 2**20:.1f} MiB "
              f"({r['kv_bytes_kept'] / 2**20:.1f} MiB kept between passes) "
              f"({r['kv_bytes_per_token']} B/token), peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB", file=sys.stderr)
    if args.json:
        print(json.dumps(rows))


def _soak(args, users: int) -> None:
    from hymoe.bench.soak import soak
    from hymoe.engine.llm import load_from_args

    if args.soak <= 0:
        raise HymoeError("--soak must be a positive number of seconds")
    args.max_context = args.max_context or 512
    row = soak(load_from_args(args), args.soak, users)
    print(f"{row['users']} users for {row['seconds']:.0f} s: {row['requests']} requests, {row['failed']} failed, "
          f"{row['lost']} lost; RSS {row['rss_after_warmup_bytes'] / 2**20:.0f} MiB after warm-up, "
          f"{row['rss_end_bytes'] / 2**20:.0f} MiB at the end ({row['rss_growth_after_warmup']:+.1%})", file=sys.stderr)
    if args.json:
        print(json.dumps(row))


def _constrained(args, users: list[int]) -> None:
    from hymoe.bench.serve import bench_constrained
    from hymoe.engine.llm import load_from_args

    rows = bench_constrained(load_from_args(args), users, args.gen_tokens, args.response_format)
    for r in rows:
        print(f"{r['users']} users, {r['response_format']}: {r['free_aggregate_tokens_per_s']:.1f} tok/s free, "
              f"{r['constrained_aggregate_tokens_per_s']:.1f} constrained ({r['overhead']:+.1%} overhead; "
              f"medians of {r['rounds']} alternating runs)", file=sys.stderr)
    if args.json:
        print(json.dumps(rows))


def cmd_bench_serve(args) -> None:
    from hymoe.bench.serve import bench_serve, bench_shared_prefix
    from hymoe.engine.llm import load_from_args

    if args.shared_prefix is not None:
        if args.shared_prefix < 1:
            raise HymoeError("--shared-prefix must be at least 1")
        args.max_context = max(args.max_context or 0, args.shared_prefix + 64)
        row = bench_shared_prefix(load_from_args(args), args.shared_prefix)
        print(f"shared prefix of {row['shared_prefix']} tokens: time to first token {row['ttft_first_ms']:.0f} ms, "
              f"then {row['ttft_second_ms']:.0f} ms ({row['ttft_ratio']:.3f}x; {row['cached_tokens']} tokens reused)",
              file=sys.stderr)
        if args.json:
            print(json.dumps(row))
        return

    users = _counts(args.users, "--users")
    if args.soak is not None:
        return _soak(args, max(users))
    if args.gen_tokens < 2:
        raise HymoeError("--gen-tokens must be at least 2")
    args.max_context = args.max_context or 512
    if args.response_format != "text":
        return _constrained(args, users)
    results = bench_serve(load_from_args(args), users, args.gen_tokens)
    base = results[0]["aggregate_tokens_per_s"]
    for r in results:
        print(f"{r['users']} users: {r['aggregate_tokens_per_s']:.1f} tok/s aggregate "
              f"({r['aggregate_tokens_per_s'] / base:.2f}x of {results[0]['users']}), "
              f"{r['per_user_tokens_per_s']:.1f} tok/s per user, TTFT {r['ttft_ms']:.0f} ms "
              f"(max {r['ttft_max_ms']:.0f})", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
