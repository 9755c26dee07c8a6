"""Every GPU test and benchmark of hymoe in one run on a lent GPU machine (issue 26):

    python scripts/gpu_check.py [--out DIR]          # on the GPU machine: about 7 minutes, install included
    python scripts/gpu_check.py --dry-run [--out DIR]  # anywhere: every step at toy size on the CPU (~1 min)

On a machine without a package index, carry the missing pure-Python dependencies as wheels in .whl/
(gguf at least: `pip download --no-deps gguf==0.19.0 -d .whl`); the setup step installs them.

Steps, each time-boxed, each failure recorded and the next step run:
1. setup: installs .whl/*.whl if there are any, builds the native kernels (pip install --no-deps
   --no-build-isolation -e .) where they are not built yet, and lists the dependencies that do not
   import;
2. gpu_tests: pytest -m gpu;
2b. dense_kernels: scripts/gpu_dense_kernels.py, the dense part's quantized matmul candidates
   (hymoe's dequantize-then-matmul, torch's int4 pack, bf16) timed on DeepSeek-V3's Q4_K shapes;
3. plan: `hymoe inspect`'s memory per device for each placement, on a header-only GGUF file of the
   very model step 4 runs;
4. e2e: `hymoe bench e2e --random deepseek-v3 --layers N --dense-type Q4_K` under cpu, hybrid,
   layers:K, with and without CUDA graphs (+eager), with hot experts on the GPU (+gpuG, and +defer1),
   and `hymoe bench prefill --tokens 2048` (GPU prefill off and on), all on one set of random weights
   generated once; torch's peak GPU memory per run beside the plan of step 3.
Writes DIR/gpu_check.json (everything), DIR/gpu_check.md (the table, also printed) and
DIR/gpu_check.log (the steps' output).

Sizes (the defaults; README "GPU paths and ROCm" and docs/placement.md say how they were chosen):
N = 12 layers at full width hold 11 MoE layers of Q4_K experts, 68 GiB of host memory (of 128);
layers:K = layers:5 holds 4 MoE layers' experts as bf16 torch weights, 85 GiB of the card (of 139).
A --dry-run uses deepseek-v3-tiny (the same architecture at toy width) and shorter prompts.

The e2e step runs in a child process whose results are read as they come: a run that crashes or
hangs loses only itself (the child is restarted for the runs left, weights generated again) and
every run after the time budget is recorded as skipped, never silently dropped.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_child import child_e2e, child_plan  # noqa: E402  (what a child process runs)
from gpu_check_report import markdown, summarize  # noqa: E402  (the table: gpu_check_report.py)
DEPENDENCIES = ("torch", "numpy", "safetensors", "transformers", "tokenizers", "tqdm", "huggingface_hub",
                "prompt_toolkit", "gguf", "yaml", "fastapi", "uvicorn", "prometheus_client")


# ---------------------------------------------------------------- sizes


def sizes(args) -> dict:
    """What each run computes: the real sizes on a GPU, toy ones in a dry run."""
    real = not args.dry_run
    n = args.layers or (12 if real else 3)
    k = args.gpu_layers or (5 if real else 2)
    g = args.gpu_experts or (32 if real else 4)
    variants = args.variants.split(",") if args.variants else [
        "cpu", "hybrid", f"layers:{k}", "hybrid+dequant", f"hybrid+gpu{g}", "prefill", "hybrid+eager",
        f"layers:{k}+eager", f"hybrid+gpu{g}+defer1"]  # in order of need: the runs left when the time budget ends are skipped
    return {"shape": "deepseek-v3" if real else "deepseek-v3-tiny", "layers": n, "gpu_layers": k, "gpu_experts": g,
            "experts_type": "Q4_K", "dense_type": "Q4_K", "prompt_tokens": 128 if real else 32,
            "gen_tokens": 64 if real else 8, "prefill_tokens": 2048 if real else 512,
            "variants": variants,
            # a run's own limit, and the least time left in which one is still started
            "run_limit_s": args.run_limit or (150 if real else 120), "run_min_s": 25 if real else 0}


# ---------------------------------------------------------------- parent


class Log:
    def __init__(self, path: Path):
        self.path = path
        path.write_text("")

    def write(self, title: str, text: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"===== {title}\n{text}\n")


def run_step(argv: list[str], timeout: float, log: Log, title: str) -> dict:
    """A subprocess with a time limit (its process group killed at it); status, seconds, output tail."""
    t = time.perf_counter()
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True, env=_env()) as p:
        try:
            out, _ = p.communicate(timeout=max(1.0, timeout))
            status = "ok" if p.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill(p)
            out, _ = p.communicate()
            status = "timeout"
    log.write(f"{title} ({status}, {time.perf_counter() - t:.1f} s): {' '.join(argv)}", out or "")
    return {"status": status, "returncode": p.returncode, "seconds": round(time.perf_counter() - t, 1),
            "tail": (out or "")[-1500:]}


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def step_setup(budget_s: float, log: Log) -> dict:
    wheels = sorted((ROOT / ".whl").glob("*.whl"))  # carried to a machine without a package index
    if wheels:
        run_step([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *map(str, wheels)],
                 min(120, budget_s), log, "pip install .whl/*.whl")
        importlib.invalidate_caches()
    missing = []
    for name in DEPENDENCIES:
        try:
            importlib.import_module(name)
        except Exception:
            missing.append(name)
    check = [sys.executable, "-c", "from hymoe.experts import native; import sys; sys.exit(native.library() is None)"]
    built = run_step(check, 60, log, "native kernels built?")
    if built["status"] == "ok":
        return {"status": "ok", "note": "native kernels already built", "missing_packages": missing, "seconds": 0}
    r = run_step([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                  "-e", "."], min(240, budget_s), log, "pip install -e .")
    if r["status"] != "ok":  # pip refused (offline, metadata): build in place, as the tests do
        r = run_step([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], min(240, budget_s), log,
                     "setup.py build_ext --inplace")
    built = run_step(check, 60, log, "native kernels built?")
    return r | {"missing_packages": missing, "native_kernels": built["status"] == "ok"}


def step_gpu_tests(timeout: float, log: Log) -> dict:
    r = run_step([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"], timeout,
                 log, "pytest -m gpu")
    lines = r["tail"].strip().splitlines()
    r["summary"] = lines[-1] if lines else ""
    r["failed"] = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    if r["returncode"] == 5:
        r["status"] = "ok"  # pytest's 5: no test was selected (none marked gpu)
    return r


def step_dense_kernels(out_dir: Path, dry_run: bool, timeout: float, log: Log) -> tuple[dict, dict | None]:
    """scripts/gpu_dense_kernels.py: the quantized matmul candidates for the dense part, timed."""
    path = out_dir / "dense_kernels.json"
    argv = [sys.executable, str(ROOT / "scripts" / "gpu_dense_kernels.py"), "--json", str(path)]
    r = run_step(argv + (["--shapes", "q_a,head", "--tokens", "1"] if dry_run else []), timeout, log,
                 "dense kernels")
    return r, json.loads(path.read_text()) if path.exists() else None


def step_child(kind: str, spec: dict, timeout: float, log: Log, results: Path) -> dict:
    results.unlink(missing_ok=True)
    r = run_step([sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec", json.dumps(spec),
                  "--results", str(results)], timeout, log, f"child {kind}")
    r["events"] = [json.loads(ln) for ln in results.read_text().splitlines() if ln.strip()] if results.exists() else []
    return r


def step_e2e(spec: dict, deadline: float, log: Log, results: Path) -> tuple[dict, dict]:
    """The runs, each by name: done (rows, memory, seconds), failed, crashed, skipped. A child that
    dies or outlives a run's limit is restarted for the runs after the one it was in."""
    runs, todo, children = {}, list(spec["variants"]), []
    while todo:
        left = deadline - time.time()
        if left < spec["run_min_s"] + 5:
            runs.update({v: {"status": "skipped", "reason": "time budget"} for v in todo})
            break
        # a limit per run: the child gets them all, and a hang costs at most one run's limit
        results.unlink(missing_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", "e2e", "--spec",
                json.dumps(spec | {"variants": todo, "deadline": deadline}), "--results", str(results)]
        t = time.perf_counter()
        p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, env=_env())
        out_path = results.with_suffix(".out")
        reader = _Drain(p, out_path)
        events, status = [], None
        while status is None:
            time.sleep(0.5)
            events = [json.loads(ln) for ln in results.read_text().splitlines() if ln.strip()] if results.exists() else []
            started = [e for e in events if e["event"] == "start"]
            finished = {e["variant"] for e in events if e["event"] != "start"}
            current = started[-1] if started and started[-1]["variant"] not in finished else None
            if p.poll() is not None:
                status = "exited" if p.returncode == 0 else f"died (returncode {p.returncode})"
            elif time.time() > deadline:
                status = "killed at the time budget"
            elif current and time.time() - current["time"] > spec["run_limit_s"]:
                status = f"killed: {current['variant']} ran past {spec['run_limit_s']} s"
            elif not started and time.perf_counter() - t > spec["run_limit_s"]:
                status = f"killed: no run started within {spec['run_limit_s']} s (generating the weights)"
        if p.poll() is None:
            _kill(p)
            p.wait()
        reader.join()
        log.write(f"child e2e ({status}, {time.perf_counter() - t:.1f} s)", out_path.read_text())
        children.append({"status": status, "seconds": round(time.perf_counter() - t, 1), "runs": len(events)})
        for e in events:
            if e["event"] == "done":
                runs[e["variant"]] = {"status": "ok"} | {k: e[k] for k in ("rows", "memory", "seconds", "notes")}
            elif e["event"] in ("failed", "skipped"):
                runs[e["variant"]] = {"status": e["event"]} | {k: e[k] for k in ("error", "reason", "seconds") if k in e}
        handled = set(runs)
        for v in todo:  # the run the child was in when it died or was killed
            if v not in handled and any(e["event"] == "start" and e["variant"] == v for e in events):
                runs[v] = {"status": "crashed", "error": status, "output_tail": out_path.read_text()[-1500:]}
                handled.add(v)
        if not any(e["event"] == "start" for e in events) and status != "exited":
            for v in todo:  # the child died before any run began (weights, imports): nothing to retry with
                runs.setdefault(v, {"status": "crashed", "error": status, "output_tail": out_path.read_text()[-1500:]})
        todo = [v for v in todo if v not in runs]
    return {"children": children}, {v: runs[v] for v in spec["variants"]}


class _Drain:
    """The child's output, copied to a file as it comes (a full pipe would stall the child)."""

    def __init__(self, p: subprocess.Popen, path: Path):
        import threading

        self.path = path
        self.thread = threading.Thread(target=self._run, args=(p,), daemon=True)
        self.thread.start()

    def _run(self, p):
        with open(self.path, "w") as f:
            for line in p.stdout:
                f.write(line)
                f.flush()

    def join(self):
        self.thread.join(timeout=10)


def device_info(real: bool) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
    try:
        info["host_memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    if real:  # nvidia-smi: the parent makes no CUDA context of its own (the children's peaks stay theirs)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
            info["gpu"] = out.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["gpu"] = f"nvidia-smi failed: {e}"
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json, .md and .log")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (automatic without CUDA)")
    ap.add_argument("--budget", type=float, help="seconds for the whole script (default: 450; dry run 300)")
    ap.add_argument("--layers", type=int, help="N: layers of the random model (default: 12; dry run 3)")
    ap.add_argument("--gpu-layers", type=int, help="K of layers:K (default: 5; dry run 2)")
    ap.add_argument("--gpu-experts", type=int, help="hot experts per layer of the +gpuG runs (default: 32; dry run 4)")
    ap.add_argument("--variants", help="comma list of e2e runs: placements with bench e2e's +options, and "
                    "'prefill' (default: cpu, hybrid, layers:K, hybrid+eager, hybrid+gpuG, prefill, "
                    "layers:K+eager, hybrid+gpuG+defer1)")
    ap.add_argument("--run-limit", type=float, help="seconds one e2e run may take before it is killed "
                    "(default: 150; dry run 120)")
    ap.add_argument("--skip", default="", help="comma list of steps to skip: setup, gpu_tests, dense_kernels, plan, e2e")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        {"e2e": child_e2e, "plan": child_plan}[args.child](json.loads(args.spec), Path(args.results))
        return

    start = time.time()
    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_check: no CUDA device: a dry run (toy sizes on the CPU)", file=sys.stderr)
        args.dry_run = True
    budget = args.budget or (300 if args.dry_run else 450)
    deadline = start + budget
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(out_dir / "gpu_check.log")
    skip = set(filter(None, args.skip.split(",")))
    s = sizes(args)
    out = {"dry_run": args.dry_run, "budget_s": budget, "sizes": s, "device": device_info(not args.dry_run),
           "steps": {}}
    spec = {k: s[k] for k in ("shape", "layers", "gpu_layers", "gpu_experts", "experts_type", "dense_type",
                              "prompt_tokens", "gen_tokens", "prefill_tokens", "variants", "run_limit_s", "run_min_s")}
    out["commands"] = [  # the CLI equivalents of the e2e step's runs
        f"hymoe bench e2e --random {s['shape']} --layers {s['layers']} --experts-type {s['experts_type']} "
        f"--dense-type {s['dense_type']} --prompt-tokens {s['prompt_tokens']} --gen-tokens {s['gen_tokens']} "
        f"--placement {','.join(v for v in s['variants'] if v != 'prefill')} --json",
        f"hymoe bench prefill --random {s['shape']} --layers {s['layers']} --tokens {s['prefill_tokens']} --json"]
    results = out_dir / "gpu_check.events"

    def left(cap: float) -> float:
        return min(cap, deadline - time.time())

    steps = out["steps"]
    if "setup" not in skip:
        steps["setup"] = step_setup(left(240), log)
    if "gpu_tests" not in skip:
        steps["gpu_tests"] = step_gpu_tests(left(150 if not args.dry_run else 200), log)
    if "dense_kernels" not in skip:
        steps["dense_kernels"], out["dense_kernels"] = step_dense_kernels(out_dir, args.dry_run, left(90), log)
    if "plan" not in skip:
        r = step_child("plan", spec, left(60), log, results)
        out["plan"] = r.pop("events")[0] if r.get("events") else None
        steps["plan"] = r
    if "e2e" not in skip:
        t = time.perf_counter()
        # a few seconds kept for the table
        summary, out["e2e"] = step_e2e(spec, deadline - 5, log, results)
        statuses = [r["status"] for r in out["e2e"].values()]
        steps["e2e"] = summary | {"status": "ok" if all(x == "ok" for x in statuses) else
                                  f"{statuses.count('ok')} of {len(statuses)} runs ok",
                                  "seconds": round(time.perf_counter() - t, 1)}
    for p in (results, results.with_suffix(".out")):
        p.unlink(missing_ok=True)
    out["total_seconds"] = round(time.time() - start, 1)
    summarize(out)
    table = markdown(out)
    (out_dir / "gpu_check.json").write_text(json.dumps(out, indent=1))
    (out_dir / "gpu_check.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
