"""Measure decode the way serving engines run it, with the board's power: whole Llama-shaped models
(embedding, every layer, final norm, LM head, greedy pick) stepping over a static KV cache, each
step replayed as one CUDA graph (as vLLM and SGLang do), at several batch sizes and contexts; NVML
power sampled during each loop. Also reads power and limits through the node agent's NVML reader
while a matmul load runs (it never sets a limit).

Needs torch and pynvml (no model download):

    python -m tessera.workers.power.measure --out engine.json              # on the GPU
    python -m tessera.workers.power.measure --tiny --device cpu --out /tmp/t.json

``python -m tessera.planner.calibration.fit --engine engine.json`` fits the engine profile to it.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import threading
import time

import torch

from tessera.planner.calibration.measure import DecoderStack, arguments, capture, log  # the unfused calibration's
from tessera.workers.power.readers import NvmlReader

# config.json of Llama-3.1-8B (fitted on) and Llama-3.2-3B (held out); vocabulary 128,256.
MODELS = {
    "llama-8b": dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=32),
    "llama-3b": dict(hidden=3072, intermediate=8192, heads=24, kv_heads=8, layers=28),
}
VOCAB = 128_256
CASES = [(1, 1024), (1, 8192), (8, 1024), (8, 4096), (32, 1024), (32, 4096), (64, 2048), (128, 1024), (256, 512)]
TINY_MODELS = {"tiny": dict(hidden=256, intermediate=512, heads=4, kv_heads=2, layers=2)}
TINY_CASES = [(1, 64), (4, 64)]
POWER_SECONDS = 2.5


class Model(DecoderStack):
    """The decoder stack plus what a whole model adds per step: embedding lookup, final norm, LM head, argmax."""

    def __init__(self, vocab, **shape):
        super().__init__(**shape)
        self.embed = torch.randn(vocab, shape["hidden"], device=shape["device"], dtype=shape["dtype"]) * 0.02
        self.head = torch.randn(vocab, shape["hidden"], device=shape["device"], dtype=shape["dtype"]) * 0.02
        self.final = torch.ones(shape["hidden"], device=shape["device"], dtype=shape["dtype"])

    def params(self) -> int:
        return super().params() + self.embed.numel() + self.head.numel()

    def step(self, tokens, positions, cache):
        x = self.embed[tokens][:, None, :]
        x = super().forward(x, positions, cache, positions)
        logits = torch.nn.functional.rms_norm(x[:, 0], (self.h,), self.final) @ self.head.T
        return logits.argmax(-1)


class Sampler:
    """Reads every device through ``read`` every ``period`` seconds on a thread, while the block runs."""

    def __init__(self, read, index: int, period: float = 0.02):
        self.read, self.index, self.period = read, index, period
        self.samples: list[dict] = []

    def __enter__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.is_set():
            reading = self.read()[self.index]
            self.samples.append({"power_watts": reading.power_watts, "limit_watts": reading.limit_watts})
            time.sleep(self.period)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict | None:
        watts = sorted(s["power_watts"] for s in self.samples[len(self.samples) // 4:])  # skip the ramp-up
        if not watts:
            return None
        return {"median_watts": statistics.median(watts), "max_watts": watts[-1], "samples": len(self.samples),
                "limit_watts": self.samples[-1]["limit_watts"]}


def open_reader():
    try:
        return NvmlReader()
    except Exception as err:  # no NVML on this machine (the CPU smoke test)
        log(f"NVML unavailable ({err}): measuring without power")
        return None


def loop_for(fn, seconds: float, sync) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            fn()
        sync()


def time_per_call(fn, device, iters: int) -> float:
    """Median of ``iters`` timings of 5 back-to-back calls, per call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        for _ in range(5):
            fn()
        sync()
        times.append((time.perf_counter() - t) / 5)
    return statistics.median(times)


def decode_cases(name, shape, cases, device, dtype, reader, index) -> dict:
    model = Model(VOCAB if name != "tiny" else 1000, **shape, device=device, dtype=dtype)
    out = {"shape": name, **shape, "vocab": model.embed.shape[0], "params": model.params(), "decode": []}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    hd = shape["hidden"] // shape["heads"]
    with torch.inference_mode():
        for batch, context in cases:
            cache = torch.randn(shape["layers"], 2, batch, shape["kv_heads"], context, hd, device=device, dtype=dtype)
            tokens = torch.randint(0, model.embed.shape[0], (batch,), device=device)
            pos = torch.tensor([context - 1], device=device)

            def step():
                return model.step(tokens, pos, cache)

            graph = capture(step, device)
            run = graph.replay if graph is not None else step
            seconds = time_per_call(run, device, 10)
            eager = time_per_call(step, device, 3)
            row = {"batch": batch, "context": context, "seconds": seconds, "eager_seconds": eager,
                   "mode": "cudagraph" if graph is not None else "eager"}
            if reader is not None:
                with Sampler(reader.read, index) as sampler:
                    loop_for(run, POWER_SECONDS, sync)
                row["power"] = sampler.summary()
            out["decode"].append(row)
            log(f"{name} decode batch {batch} context {context}: {seconds * 1e3:.3f} ms ({row['mode']}; eager "
                f"{eager * 1e3:.3f} ms) {row.get('power')}")
            del cache, graph
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del model
    return out


def reader_under_load(reader, index, device, dtype) -> dict:
    """The agent's NVML reader, for real: every field idle, under an 8192^3 bf16 GEMM loop and under a
    batch-1 weight stream (GEMV over 8 GiB), as the agent would export them."""
    sync = torch.cuda.synchronize
    out = {}
    with Sampler(reader.read, index) as idle:
        time.sleep(POWER_SECONDS)
    out["idle"] = idle.summary()
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    b = torch.randn(8192, 8192, device=device, dtype=dtype)
    with Sampler(reader.read, index) as gemm:
        loop_for(lambda: a @ b, 2 * POWER_SECONDS, sync)
    out["gemm 8192^3"] = gemm.summary()
    del a, b
    weights = torch.randn(32, 16384, 8192, device=device, dtype=dtype)  # 8 GiB
    x = torch.randn(8192, 1, device=device, dtype=dtype)
    with Sampler(reader.read, index) as stream:
        loop_for(lambda: torch.matmul(weights, x), 2 * POWER_SECONDS, sync)
    out["weight stream 8 GiB gemv"] = stream.summary()
    del weights
    torch.cuda.empty_cache()
    first = reader.read()[index]
    out["device"] = {k: getattr(first, k) for k in ("index", "uuid", "name", "limit_watts", "min_limit_watts",
                                                   "max_limit_watts", "default_limit_watts")}
    out["devices_seen"] = len(reader.read())
    log(f"reader: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0]).parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16
    torch.manual_seed(0)
    index = device.index or 0
    reader = open_reader() if device.type == "cuda" else None
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "dtype": "bf16", "date": time.strftime("%Y-%m-%d")}
    log(f"measuring on {result['device']} (torch {result['torch']})")
    started = time.perf_counter()
    if reader is not None:
        result["reader"] = reader_under_load(reader, index, device, dtype)
    models, cases = (TINY_MODELS, TINY_CASES) if args.tiny else (MODELS, CASES)
    result["models"] = [decode_cases(n, s, cases, device, dtype, reader, index) for n, s in models.items()]
    result["seconds"] = time.perf_counter() - started
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    log(f"wrote {args.out} after {result['seconds']:.0f} s")
    if reader is not None:
        reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
