"""PyTorch peer of `cargo xtask bench peer`: the same Llama, data shape and schedule in PyTorch.

One stage trains in one process with an ordinary training loop. Two or more stages run
`torch.distributed.pipelining`'s Schedule1F1B, one process per stage over gloo on 127.0.0.1,
each process limited to `--threads` intra-op threads. Timing starts after `--warmup` optimizer
steps; the last line printed is one JSON object with tokens/s and the per-step times.

Run by xtask (`.venv-peer`, made by the xtask itself), or by hand:
    python torch_pipeline.py --stages 2 --steps 6
"""

import argparse
import json
import math
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--batch", type=int, default=1, help="sequences per micro-batch")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--lr", type=float, default=3e-3)
    return p.parse_args(argv)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq_len, head_dim, theta=10000.0):
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Layer(nn.Module):
    """A Llama decoder layer: RMSNorm, GQA attention with RoPE, RMSNorm, SwiGLU."""

    def __init__(self, a):
        super().__init__()
        self.h, self.hkv, self.d = a.heads, a.kv_heads, a.hidden // a.heads
        self.norm1, self.norm2 = RMSNorm(a.hidden), RMSNorm(a.hidden)
        self.q = nn.Linear(a.hidden, self.h * self.d, bias=False)
        self.k = nn.Linear(a.hidden, self.hkv * self.d, bias=False)
        self.v = nn.Linear(a.hidden, self.hkv * self.d, bias=False)
        self.o = nn.Linear(self.h * self.d, a.hidden, bias=False)
        self.gate = nn.Linear(a.hidden, a.ffn, bias=False)
        self.up = nn.Linear(a.hidden, a.ffn, bias=False)
        self.down = nn.Linear(a.ffn, a.hidden, bias=False)
        cos, sin = rope_tables(a.seq_len, self.d)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x):
        b, s, _ = x.shape
        y = self.norm1(x)
        q = self.q(y).view(b, s, self.h, self.d).transpose(1, 2)
        k = self.k(y).view(b, s, self.hkv, self.d).transpose(1, 2)
        v = self.v(y).view(b, s, self.hkv, self.d).transpose(1, 2)
        q = q * self.cos + rotate_half(q) * self.sin
        k = k * self.cos + rotate_half(k) * self.sin
        att = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.hkv != self.h
        )
        x = x + self.o(att.transpose(1, 2).reshape(b, s, self.h * self.d))
        y = self.norm2(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class Stage(nn.Module):
    """Layers `lo..hi`; the first stage embeds, the last normalises and projects to logits."""

    def __init__(self, a, lo, hi):
        super().__init__()
        self.embed = nn.Embedding(a.vocab, a.hidden) if lo == 0 else None
        self.layers = nn.ModuleList(Layer(a) for _ in range(lo, hi))
        last = hi == a.layers
        self.norm = RMSNorm(a.hidden) if last else None
        self.head = nn.Linear(a.hidden, a.vocab, bias=False) if last else None

    def forward(self, x):
        if self.embed is not None:
            x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        if self.head is not None:
            x = self.head(self.norm(x))
        return x


def loss_fn(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def layer_range(a, rank):
    per = a.layers // a.stages
    return rank * per, (rank + 1) * per


def batches(a, step):
    g = torch.Generator().manual_seed(step)
    n = a.microbatches * a.batch
    tokens = torch.randint(0, a.vocab, (n, a.seq_len + 1), generator=g)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def optimizer(model, a):
    return torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)


def clip_global(model, max_norm, group_sum):
    """Global-norm clipping over every stage's parameters, as seqpipe clips."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    sq = torch.stack([g.pow(2).sum() for g in grads]).sum()
    sq = group_sum(sq)
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)


def timed_steps(a, step_fn):
    times = []
    for step in range(a.warmup + a.steps):
        start = time.perf_counter()
        step_fn(step)
        if step >= a.warmup:
            times.append(time.perf_counter() - start)
    return times


def report(a, times):
    tokens = a.microbatches * a.batch * a.seq_len
    median = sorted(times)[len(times) // 2]
    print(json.dumps({
        "stages": a.stages,
        "threads_per_process": a.threads,
        "torch": torch.__version__,
        "step_seconds": times,
        "tokens_per_sec": tokens / median,
    }))


def single_process(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Stage(a, 0, a.layers)
    opt = optimizer(model, a)

    def step(i):
        x, y = batches(a, i)
        opt.zero_grad(set_to_none=True)
        for xm, ym in zip(x.chunk(a.microbatches), y.chunk(a.microbatches)):
            (loss_fn(model(xm), ym) / a.microbatches).backward()
        clip_global(model, 1.0, lambda t: t)
        opt.step()

    report(a, timed_steps(a, step))


def pipeline_rank(rank, a, port):
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    torch.set_num_threads(a.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=a.stages)
    torch.manual_seed(rank)
    model = Stage(a, *layer_range(a, rank))
    stage = PipelineStage(model, rank, a.stages, torch.device("cpu"))
    schedule = Schedule1F1B(
        stage, a.microbatches, loss_fn=lambda out, tgt: loss_fn(out, tgt) / a.microbatches
    )
    opt = optimizer(model, a)

    def group_sum(t):
        dist.all_reduce(t)
        return t

    def step(i):
        x, y = batches(a, i)
        opt.zero_grad(set_to_none=True)
        if rank == 0:
            schedule.step(x)
        elif rank == a.stages - 1:
            schedule.step(target=y)
        else:
            schedule.step()
        clip_global(model, 1.0, group_sum)
        opt.step()

    times = timed_steps(a, step)
    # A step ends on every rank together (the clip's all-reduce); rank 0 reports.
    if rank == 0:
        report(a, times)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv):
    a = parse_args(argv)
    if a.layers % a.stages != 0:
        sys.exit(f"--layers {a.layers} must be a multiple of --stages {a.stages}")
    if a.stages == 1:
        single_process(a)
    else:
        mp.spawn(pipeline_rank, args=(a, free_port()), nprocs=a.stages, join=True)


if __name__ == "__main__":
    main(sys.argv[1:])
