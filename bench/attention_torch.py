"""PyTorch SDPA (is_causal=True) at the shapes of bench/attention.cu, bf16, layout (B, H, T, d).

Forward and forward+backward, median of CUDA-event timings after warm-up, TFLOP/s with causal
FLOPs 4*B*H*T^2*d/2 (forward) and 2.5x that (backward). Runs the default backend choice and,
where available, the flash and cuDNN backends explicitly.
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, iters=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    cases = [(16, 12, 2048, 64), (4, 12, 8192, 64), (8, 16, 2048, 128), (8, 16, 2048, 96)]
    backends = [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                ("cudnn", SDPBackend.CUDNN_ATTENTION)]
    print(f"{'shape (causal, bf16)':28s} {'backend':8s} {'fwd ms':>10s} {'fwd TF/s':>10s} "
          f"{'f+b ms':>10s} {'f+b TF/s':>10s} {'bwd ms':>10s} {'bwd TF/s':>10s}")
    for B, H, T, d in cases:
        q, k, v = (torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        g = torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16)
        flops = 4.0 * B * H * T * T * d / 2
        for name, backend in backends:
            try:
                def fwd():
                    with torch.no_grad():
                        F.scaled_dot_product_attention(q, k, v, is_causal=True)

                def fb():
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    q.grad = k.grad = v.grad = None
                    out.backward(g)

                if backend is None:
                    tf, tb = median_ms(fwd, iters), median_ms(fb, iters)
                else:
                    with sdpa_kernel(backend):
                        tf, tb = median_ms(fwd, iters), median_ms(fb, iters)
            except Exception as e:  # a backend may be unavailable
                print(f"B{B} H{H} T{T} d{d}: {name}: unavailable ({str(e).splitlines()[0][:80]})")
                continue
            print(f"{f'B{B} H{H} T{T} d{d}':28s} {name:8s} {tf:10.3f} {flops / tf * 1e-9:10.1f} "
                  f"{tb:10.3f} {3.5 * flops / tb * 1e-9:10.1f} {tb - tf:10.3f} "
                  f"{2.5 * flops / (tb - tf) * 1e-9:10.1f}")


if __name__ == "__main__":
    main()
