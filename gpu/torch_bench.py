"""PyTorch side of `xtask bench gpu` (GPU machine only): times scaled_dot_product_attention
forward+backward in bf16 on the shapes listed in the JSON file argv[1] and writes the median
milliseconds per shape to argv[2].

Causality is bottom-right aligned (a query slice at the end of its key prefix), as seqpipe's
kernels define it: torch.nn.attention.bias.causal_lower_right, which PyTorch dispatches to its
FlashAttention / cuDNN kernels. GQA uses enable_gqa where available, else repeat_interleave.
"""

import json
import sys

import torch
import torch.nn.functional as F


def lower_right(sq, sk):
    try:
        from torch.nn.attention.bias import causal_lower_right

        return causal_lower_right(sq, sk)
    except ImportError:
        rows = torch.arange(sq, device="cuda")[:, None]
        cols = torch.arange(sk, device="cuda")[None, :]
        return cols <= sk - sq + rows


def sdpa(q, k, v, mask):
    h, hkv = q.shape[1], k.shape[1]
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=h != hkv)
    except TypeError:
        g = h // hkv
        return F.scaled_dot_product_attention(
            q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask
        )


def time_shape(b, h, hkv, sq, sk, d, reps):
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(b, h, sq, d, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(b, hkv, sk, d, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(b, hkv, sk, d, device=dev, dtype=dt, requires_grad=True)
    do = torch.randn(b, h, sq, d, device=dev, dtype=dt)
    mask = lower_right(sq, sk)
    times = []
    for i in range(reps + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = sdpa(q, k, v, mask)
        out.backward(do)
        end.record()
        torch.cuda.synchronize()
        if i >= 2:  # warm-up
            times.append(start.elapsed_time(end))
        q.grad = k.grad = v.grad = None
    times.sort()
    return times[len(times) // 2]


def main(src, dst):
    shapes = json.load(open(src))
    out = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
        "ms": [time_shape(s["b"], s["h"], s["hkv"], s["sq"], s["sk"], s["d"], s["reps"]) for s in shapes],
    }
    json.dump(out, open(dst, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
