#!/usr/bin/env python3
"""torch_check.py — a PyTorch user's check of cpattn's context-parallel
attention: a tiny attention layer (q/k/v/o projections, RoPE at the tokens'
global positions, GQA, causal mask) whose attention runs through cpattn's
ring attention on each rank's shard of the sequence, compared — output,
input gradient and every weight gradient — with the same layer run by
PyTorch's own attention on the whole gathered sequence in one process.

    PYTHONPATH=PREFIX/lib/python3/dist-packages \\
        mpiexec -n 4 python3 examples/torch_check.py [--algo megatron_cp_algo] [--window 1]

The reference is torch.nn.functional.scaled_dot_product_attention where
PyTorch has it (2.0 and later), else softmax(q k^T / sqrt(D) + causal
mask) v written with torch ops (Debian 12's PyTorch is 1.13); it runs in
float64, so its own rounding is negligible.  Tolerances: inputs and
weights are O(1) / O(1/sqrt(C)), cpattn computes in float32, and the
largest errors measured are a few 1e-7 relative to each tensor's largest
magnitude; the check allows 2e-5 for the output and 1e-4 for the
gradients (summed over S rows and over the ranks), relative to that
magnitude.  Prints one line per tensor on rank 0 and exits 1 on any
mismatch (on every rank).
"""
import argparse
import math
import sys

import numpy as np
import torch
from mpi4py import MPI

import cpattn
import cpattn.torch

TOL_OUT, TOL_GRAD = 2e-5, 1e-4


def rope(x, pos, base=10000.0):
    """Rotary embedding of x [B, S, N, D] at positions pos [S], pairs (i, i + D/2)."""
    D = x.shape[-1]
    inv = base ** (-torch.arange(0, D // 2, dtype=torch.float64) * 2.0 / D)
    ang = pos.to(torch.float64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[None, :, None, :].to(x.dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1)[None, :, None, :].to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Layer(torch.nn.Module):
    def __init__(self, C, H, G):
        super().__init__()
        self.H, self.G, self.D = H, G, C // H
        self.wq = torch.nn.Linear(C, H * self.D, bias=False)
        self.wk = torch.nn.Linear(C, G * self.D, bias=False)
        self.wv = torch.nn.Linear(C, G * self.D, bias=False)
        self.wo = torch.nn.Linear(H * self.D, C, bias=False)

    def qkv(self, x, pos):
        B, S, _ = x.shape
        q = rope(self.wq(x).view(B, S, self.H, self.D), pos)
        k = rope(self.wk(x).view(B, S, self.G, self.D), pos)
        v = self.wv(x).view(B, S, self.G, self.D)
        return q, k, v

    def forward_cp(self, x_local, plan):
        """This rank's rows through cpattn (bshd local shards)."""
        pos = torch.from_numpy(plan.positions())
        q, k, v = self.qkv(x_local, pos)
        o = cpattn.torch.attention(q, k, v, plan)
        return self.wo(o.reshape(x_local.shape[0], x_local.shape[1], -1))

    def forward_ref(self, x):
        """The whole sequence through PyTorch's attention."""
        B, S, _ = x.shape
        q, k, v = self.qkv(x, torch.arange(S))
        rep = self.H // self.G
        q, k, v = (t.transpose(1, 2) for t in (q, k.repeat_interleave(rep, 2),
                                              v.repeat_interleave(rep, 2)))
        sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
        if sdpa is not None:
            o = sdpa(q, k, v, is_causal=True)
        else:
            s = q @ k.transpose(-1, -2) / math.sqrt(self.D)
            mask = torch.ones(S, S, dtype=torch.bool).tril()
            o = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
        return self.wo(o.transpose(1, 2).reshape(B, S, -1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algo", default="megatron_cp_algo")
    ap.add_argument("--window", type=int, default=1, help="--cp-window-size")
    ap.add_argument("--ulysses-degree", type=int, default=None)
    ap.add_argument("--seq-length", type=int, default=128)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    B, S, C, H, G = 2, args.seq_length, 64, 4, 2
    torch.manual_seed(0)  # the same weights and data on every rank
    layer = Layer(C, H, G)
    x = torch.randn(B, S, C)
    target = torch.randn(B, S, C)

    plan = cpattn.Plan(comm, algo=args.algo, batch=B, seq_length=S, num_heads=H, num_kv_heads=G,
                       head_dim=C // H, mask="causal", cp_window_size=args.window,
                       ulysses_degree_in_cp=args.ulysses_degree, send_recv_overlap=True)
    # This rank's rows of x and of the target ([B, S, 1, C] views for shard).
    x_local = torch.from_numpy(plan.shard(x.numpy()[:, :, None, :])[:, :, 0, :]).requires_grad_()
    t_local = torch.from_numpy(plan.shard(target.numpy()[:, :, None, :])[:, :, 0, :])
    y_local = layer.forward_cp(x_local, plan)
    (y_local * t_local).sum().backward()  # loss = sum over every rank's rows
    y = plan.unshard(y_local.detach().numpy()[:, :, None, :])[:, :, 0, :]
    dx = plan.unshard(x_local.grad.numpy()[:, :, None, :])[:, :, 0, :]
    # Each rank's weight gradients are its rows' share: sum over the ranks.
    grads = {n: comm.allreduce(p.grad.numpy(), op=MPI.SUM) for n, p in layer.named_parameters()}

    ref = Layer(C, H, G).double()
    ref.load_state_dict(layer.state_dict())
    xr = x.double().requires_grad_()
    yr = ref.forward_ref(xr)
    (yr * target.double()).sum().backward()

    checks = [("output", y, yr.detach().numpy(), TOL_OUT),
              ("d input", dx, xr.grad.numpy(), TOL_GRAD)]
    checks += [("d " + n, grads[n], p.grad.numpy(), TOL_GRAD) for n, p in ref.named_parameters()]
    ok = True
    for name, got, want, tol in checks:
        scale = max(1.0, float(np.abs(want).max()))
        err = float(np.abs(got - want).max()) / scale
        good = err <= tol
        ok &= good
        if rank == 0:
            print("%s %-8s max abs err %.2e relative to max |ref| %.2e (tolerance %.0e)"
                  % ("ok  " if good else "FAIL", name, err * scale, scale, tol))
    ok = comm.allreduce(1 if ok else 0, op=MPI.MIN) == 1
    if rank == 0:
        print("torch_check: %s, %s over %d ranks, S=%d: %s"
              % (args.algo, "window %d" % args.window, comm.Get_size(), S,
                 "outputs and gradients match PyTorch" if ok else "MISMATCH"))
    plan.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
