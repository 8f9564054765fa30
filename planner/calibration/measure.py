"""Measure what the roofline cost model predicts, on a real GPU: bf16 matmul throughput, memory
bandwidth, and prefill and decode latency of Llama-shaped decoder layers with random weights.

Standalone on purpose (torch only, no tessera import), so it runs on a bare GPU machine:

    python3 planner/calibration/measure.py --out h100.json            # on the GPU
    python3 planner/calibration/measure.py --tiny --device cpu --out /tmp/t.json   # a smoke test anywhere

Then ``python -m tessera.planner.calibration.fit h100.json`` prints the cost model's error on each
measurement and fits the efficiency factors (docs/calibration.md).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch
import torch.nn.functional as F

# Llama-3 shapes (config.json of Llama-3.1-8B and -70B); a stack of a few layers, random weights.
SHAPES = {
    "llama-8b": dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=8),
    "llama-70b": dict(hidden=8192, intermediate=28672, heads=64, kv_heads=8, layers=2),
}
TINY = {"tiny": dict(hidden=256, intermediate=512, heads=4, kv_heads=2, layers=2)}
PREFILL_CASES = [(1, 512), (1, 2048), (1, 8192), (4, 2048), (16, 512), (8, 1024)]  # (batch, prompt tokens)
DECODE_CASES = [(1, 1024), (8, 1024), (32, 1024), (64, 2048), (128, 1024), (256, 512), (16, 8192)]  # (batch, context)
TINY_PREFILL = [(1, 32), (2, 64)]
TINY_DECODE = [(1, 64), (4, 64)]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Timer:
    """Median wall time of a callable, synchronized, after warm-up (CUDA events on a GPU)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn, warmup: int = 3, iters: int = 10) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(iters):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        times.sort()
        return times[len(times) // 2]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def matmul_tflops(timer: Timer, device, dtype, sizes) -> list[dict]:
    out = []
    for m, k, n in sizes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        seconds = timer(lambda: a @ b)
        out.append({"m": m, "k": k, "n": n, "seconds": seconds, "tflops": 2 * m * k * n / seconds / 1e12})
        log(f"matmul {m}x{k}x{n}: {out[-1]['tflops']:.1f} TFLOP/s")
    return out


def bandwidth(timer: Timer, device, gib: float) -> dict:
    """Read bandwidth (a sum over a large bf16 tensor: what decode does to weights) and copy bandwidth."""
    n = int(gib * 2**30 / 2)
    x = torch.randn(n, device=device, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    read_s = timer(lambda: x.sum(dtype=torch.float32))
    copy_s = timer(lambda: y.copy_(x))
    out = {"bytes": 2 * n, "read_GBps": 2 * n / read_s / 1e9, "copy_GBps": 4 * n / copy_s / 1e9}
    log(f"bandwidth: read {out['read_GBps']:.0f} GB/s, copy (read+write) {out['copy_GBps']:.0f} GB/s")
    return out


class DecoderStack(torch.nn.Module):
    """Llama decoder layers: RMSNorm, fused QKV, rotary embedding, GQA attention, SwiGLU MLP."""

    def __init__(self, hidden, intermediate, heads, kv_heads, layers, device, dtype):
        super().__init__()
        self.h, self.heads, self.kv, self.hd = hidden, heads, kv_heads, hidden // heads

        def weight(*shape):
            return torch.nn.Parameter(torch.randn(*shape, device=device, dtype=dtype) * 0.02, requires_grad=False)

        self.qkv = [weight((heads + 2 * kv_heads) * self.hd, hidden) for _ in range(layers)]
        self.o = [weight(hidden, hidden) for _ in range(layers)]
        self.up = [weight(2 * intermediate, hidden) for _ in range(layers)]  # gate and up, fused
        self.down = [weight(hidden, intermediate) for _ in range(layers)]
        self.norm = [weight(hidden) for _ in range(2 * layers)]
        self.layers = layers

    def params(self) -> int:
        return sum(t.numel() for group in (self.qkv, self.o, self.up, self.down) for t in group)

    def rotary(self, x, positions):
        half = self.hd // 2
        freq = 1.0 / (500000 ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
        angle = positions[:, None].float() * freq[None, :]
        cos, sin = angle.cos().to(x.dtype)[:, None, :], angle.sin().to(x.dtype)[:, None, :]  # [tokens, 1, half]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def forward(self, x, positions, cache=None, write_at=None):
        """x: [batch, tokens, hidden]. Prefill: cache None, causal attention over the prompt. Decode: one
        token per sequence attending over a static cache [layers, 2, batch, kv, context, hd]."""
        b, t, _ = x.shape
        for i in range(self.layers):
            y = F.rms_norm(x, (self.h,), self.norm[2 * i])
            q, k, v = (y @ self.qkv[i].T).split([self.heads * self.hd, self.kv * self.hd, self.kv * self.hd], dim=-1)
            q = self.rotary(q.view(b, t, self.heads, self.hd), positions).transpose(1, 2)
            k = self.rotary(k.view(b, t, self.kv, self.hd), positions).transpose(1, 2)
            v = v.view(b, t, self.kv, self.hd).transpose(1, 2)
            if cache is None:
                attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                cache[i, 0].index_copy_(2, write_at, k)
                cache[i, 1].index_copy_(2, write_at, v)
                attn = F.scaled_dot_product_attention(q, cache[i, 0], cache[i, 1], enable_gqa=True)
            x = x + attn.transpose(1, 2).reshape(b, t, self.h) @ self.o[i].T
            y = F.rms_norm(x, (self.h,), self.norm[2 * i + 1])
            gate, up = (y @ self.up[i].T).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ self.down[i].T
        return x


def capture(fn, device):
    """``fn`` as one CUDA graph, warmed up on a side stream (None off CUDA)."""
    if device.type != "cuda":
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def layer_latencies(timer: Timer, device, dtype, name, shape, prefill_cases, decode_cases, graphs: bool) -> dict:
    stack = DecoderStack(**shape, device=device, dtype=dtype)
    out = {"shape": name, **shape, "params": stack.params(), "prefill": [], "decode": []}
    with torch.inference_mode():
        for batch, tokens in prefill_cases:
            x = torch.randn(batch, tokens, shape["hidden"], device=device, dtype=dtype)
            pos = torch.arange(tokens, device=device)
            seconds = timer(lambda: stack(x, pos), warmup=2, iters=7)
            out["prefill"].append({"batch": batch, "tokens": tokens, "seconds": seconds})
            log(f"{name} prefill batch {batch} x {tokens} tokens: {seconds * 1000:.2f} ms")
            del x
        for batch, context in decode_cases:
            hd = shape["hidden"] // shape["heads"]
            cache = torch.randn(shape["layers"], 2, batch, shape["kv_heads"], context, hd, device=device, dtype=dtype)
            x = torch.randn(batch, 1, shape["hidden"], device=device, dtype=dtype)
            pos = torch.tensor([context - 1], device=device)

            def step():
                return stack(x, pos, cache, pos)

            mode = "eager"
            if graphs and device.type == "cuda":
                try:  # a serving engine replays decode steps as CUDA graphs (no launch overhead)
                    run = capture(step, device).replay
                    mode = "cudagraph"
                except Exception as err:  # measure eagerly rather than not at all
                    log(f"CUDA graph capture failed ({err}); timing eagerly")
                    run = step
            else:
                run = step
            seconds = timer(run, warmup=3, iters=20)
            eager = timer(step, warmup=2, iters=10) if mode == "cudagraph" else seconds
            out["decode"].append({"batch": batch, "context": context, "seconds": seconds, "mode": mode,
                                  "eager_seconds": eager})
            log(f"{name} decode batch {batch} context {context}: {seconds * 1000:.3f} ms ({mode}; eager {eager * 1000:.3f} ms)")
            del cache, x
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out


class PowerSampler:
    """Board power from nvidia-smi every 100 ms while a phase runs (None where nvidia-smi is missing)."""

    def __enter__(self):
        import shutil
        import subprocess

        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        return self

    def __exit__(self, *exc):
        self.samples = []
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=5)
            for line in out.splitlines():
                try:
                    self.samples.append(float(line.strip()))
                except ValueError:
                    continue

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples[len(self.samples) // 4:])  # skip the ramp-up
        return {"median_watts": ordered[len(ordered) // 2], "max_watts": ordered[-1], "samples": len(self.samples)}


def power_phases(device, dtype, shape: dict, seconds: float) -> dict:
    """Board power while idle, in a prefill loop and in decode loops (POLCA: prefill near TDP, decode far less)."""
    stack = DecoderStack(**shape, device=device, dtype=dtype)
    hd = shape["hidden"] // shape["heads"]
    out = {}

    def loop(fn):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()

    with torch.inference_mode():
        with PowerSampler() as idle:
            time.sleep(seconds)
        out["idle"] = idle.summary()
        x = torch.randn(1, 8192, shape["hidden"], device=device, dtype=dtype)
        pos = torch.arange(8192, device=device)
        with PowerSampler() as prefill:
            loop(lambda: stack(x, pos))
        out["prefill batch 1 x 8192"] = prefill.summary()
        for batch, context in ((8, 1024), (128, 1024)):
            cache = torch.randn(shape["layers"], 2, batch, shape["kv_heads"], context, hd, device=device, dtype=dtype)
            x = torch.randn(batch, 1, shape["hidden"], device=device, dtype=dtype)
            pos = torch.tensor([context - 1], device=device)
            with PowerSampler() as decode:
                loop(lambda: stack(x, pos, cache, pos))
            out[f"decode batch {batch}, context {context}"] = decode.summary()
            del cache
    log(f"power: {out}")
    return out


def arguments(description: str) -> argparse.ArgumentParser:
    """The options every measurement script takes: where to write, on which device, tiny or not."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="JSON file to write the measurements to")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke test of the script itself")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0]).parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16
    timer = Timer(device)
    torch.manual_seed(0)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": "bf16",
    }
    log(f"measuring on {result['device']} (torch {result['torch']})")
    if args.tiny:
        sizes, gib, shapes, prefill, decode = [(256, 256, 256)], 0.01, TINY, TINY_PREFILL, TINY_DECODE
    else:
        sizes = [(4096, 4096, 4096), (8192, 8192, 8192), (2048, 4096, 14336), (8192, 4096, 28672)]
        gib, shapes, prefill, decode = 4.0, SHAPES, PREFILL_CASES, DECODE_CASES
    started = time.perf_counter()
    result["matmul"] = matmul_tflops(timer, device, dtype, sizes)
    result["bandwidth"] = bandwidth(timer, device, gib)
    result["layers"] = [layer_latencies(timer, device, dtype, name, shape, prefill, decode, graphs=True)
                        for name, shape in shapes.items()]
    if device.type == "cuda" and not args.tiny:
        result["power"] = power_phases(device, dtype, SHAPES["llama-8b"], seconds=6.0)
    result["seconds"] = time.perf_counter() - started
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    log(f"wrote {args.out} after {result['seconds']:.0f} s")
    return 0 if all(math.isfinite(m["tflops"]) for m in result["matmul"]) else 1


if __name__ == "__main__":
    sys.exit(main())
