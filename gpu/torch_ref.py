"""PyTorch references for `xtask gpu-test` (run on the GPU machine, never in CI).

Reads DIR/manifest.json and the raw little-endian inputs it names, computes every case's outputs
in float32 on the GPU with PyTorch (autograd for the gradients, scaled_dot_product_attention for
attention), and writes DIR/torch/<case>.<output>.bin (float32) plus DIR/torch/manifest.json.
Inputs of bf16 runs arrive already rounded to bf16, so the reference sees the same numbers.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


def load(dirname, spec):
    dtype = {"f32": np.float32, "u32": np.uint32}[spec["dtype"]]
    a = np.fromfile(os.path.join(dirname, spec["file"]), dtype=dtype).reshape(spec["shape"])
    if spec["dtype"] == "u32":
        return torch.from_numpy(a.astype(np.int64)).cuda()
    return torch.from_numpy(a).cuda().requires_grad_(True)


def rms_norm(i, p):
    x, w, dy = i["x"], i["w"], i["dy"]
    inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + p["eps"])
    y = x * inv * w
    dx, dw = torch.autograd.grad(y, (x, w), dy.detach())
    return {"y": y, "inv_rms": inv, "dx": dx, "dw": dw}


def rope(i, p):
    x, dy = i["x"], i["dy"]
    d, s, off = x.shape[-1], x.shape[-2], int(p["offset"])
    inv_freq = p["theta"] ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    ang = torch.arange(off, off + s, dtype=torch.float64, device=x.device)[:, None] * inv_freq
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos().float(), emb.sin().float()

    def rotate_half(t):
        return torch.cat([-t[..., d // 2:], t[..., : d // 2]], -1)

    y = x * cos + rotate_half(x) * sin
    (dx,) = torch.autograd.grad(y, (x,), dy.detach())
    return {"y": y, "dx": dx}


def swiglu(i, p):
    g, u, d = i["gate"], i["up"], i["d"]
    out = F.silu(g) * u
    dg, du = torch.autograd.grad(out, (g, u), d.detach())
    return {"out": out, "d_gate": dg, "d_up": du}


def attention(i, p):
    q, k, v, do = i["q"], i["k"], i["v"], i["d_out"]
    h, hkv, sq, sk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    kr, vr = k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1)
    if p["causal"]:
        rows = torch.arange(sq, device=q.device)[:, None]
        cols = torch.arange(sk, device=q.device)[None, :]
        mask = cols <= sk - sq + rows
    else:
        mask = None
    out = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask, scale=p["scale"])
    scores = (q @ kr.transpose(-1, -2)) * p["scale"]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do.detach())
    return {"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv}


def cross_entropy(i, p):
    hdn, w, t, m = i["hidden"], i["lm_head"], i["targets"], i["mask"].detach()
    logits = hdn @ w.T
    lse = torch.logsumexp(logits, -1)
    picked = logits.gather(1, t[:, None])[:, 0]
    loss = ((lse - picked) * m).sum() / p["normaliser"]
    dh, dw = torch.autograd.grad(loss, (hdn, w))
    return {"loss": loss.reshape(1), "lse": lse, "d_hidden": dh, "d_lm_head": dw}


OPS = {f.__name__: f for f in (rms_norm, rope, swiglu, attention, cross_entropy)}


def main(dirname):
    manifest = json.load(open(os.path.join(dirname, "manifest.json")))
    outdir = os.path.join(dirname, "torch")
    os.makedirs(outdir, exist_ok=True)
    written = {}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for case in manifest["cases"]:
        inputs = {k: load(dirname, s) for k, s in case["inputs"].items()}
        outs = OPS[case["op"]](inputs, case["params"])
        for name, t in outs.items():
            a = t.detach().float().contiguous().cpu().numpy()
            f = f"{case['name']}.{name}.bin"
            a.tofile(os.path.join(outdir, f))
            written.setdefault(case["name"], {})[name] = {"shape": list(a.shape), "file": f}
    json.dump(
        {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "outputs": written},
        open(os.path.join(outdir, "manifest.json"), "w"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
