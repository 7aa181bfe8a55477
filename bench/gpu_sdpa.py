#!/usr/bin/env python3
"""torch.nn.functional.scaled_dot_product_attention on the shapes of
bench/gpu_bench.cu's prefill section (causal, 32 query heads, 8 kv heads,
head_dim 128, bf16, batch 1), for comparison with the tensor-core kernel.
TFLOP/s counts the causal half: 2 * n^2 * d * heads. Times are medians of
CUDA-event-timed runs after a warm-up, on random inputs. Each SDPA backend
that runs the shape is timed (flash, cuDNN, memory-efficient); K and V are
expanded to 32 heads, which every backend takes."""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, warm=2, reps=10):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    seqs = [int(s) for s in sys.argv[1:]] or [4096, 8192, 16384, 32768, 65536]
    H, KV, D = 32, 8, 128
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    print("\n| torch SDPA (causal, 32/8 heads, d 128, bf16) | tokens | backend | ms | TFLOP/s |")
    print("|---|---|---|---|---|")
    for n in seqs:
        g = torch.Generator(device="cuda").manual_seed(n)
        q = torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, KV, n, D, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, KV, n, D, device="cuda", dtype=torch.bfloat16, generator=g)
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        flops = 2.0 * n * n * D * H
        reps = 3 if n >= 32768 else 10
        for name, be in backends:
            try:
                with sdpa_kernel([be]):
                    ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                   reps=reps)
                print(f"| torch SDPA | {n // 1024}K | {name} | {ms:.2f} | {flops / ms / 1e9:.0f} |",
                      flush=True)
            except RuntimeError as e:
                print(f"| torch SDPA | {n // 1024}K | {name} | - | not available: "
                      f"{str(e).splitlines()[0][:80]} |", flush=True)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
