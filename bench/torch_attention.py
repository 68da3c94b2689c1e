#!/usr/bin/env python3
"""PyTorch side of bench/torch_peers.sh: time one attention case in this process.

Two implementations, chosen with --impl:

  materialised  what a PyTorch 1.13 user writes (1.13 has no SDPA):
                  s = (q @ k^T) * scale; s = s.masked_fill(future, -inf) if causal
                  out = softmax(s, -1) @ v
                The [S, S] `future` mask is built once, outside the timing, the way
                models keep it as a buffer.
  sdpa          torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=...)
                (PyTorch >= 2.0), whichever kernel PyTorch picks on its own; the kernel
                it actually used is read from the output's autograd node and printed.

Layout [B, H, S, D] (as SDPA expects), fp32, q/k/v require grad, scale 1/sqrt(Dqk)
(the default of both SDPA and cpattn).  GQA (G < H): k/v are expanded to H heads with
repeat_interleave inside the timed forward (a user has to do it too), or, with
--gqa native / auto where the installed SDPA takes enable_gqa=True and still runs the
same kernel, passed as [B, G, S, D].

Timing: --warmup untimed forward+backward steps, then --iters steps; each step times
the forward (building the autograd graph, as in training) and, separately,
out.backward(dout) on that fresh graph.  Gradients are reset to None between steps.

Output (stdout), parsed by torch_peers.sh, in the same form as `cpattn attn`:
  # impl ... torch ... kernel ... gqa ...
  forward  median M ms (min m, max x, n=N)
  backward median M ms (min m, max x, n=N)
  base RSS N MiB      (after importing torch, before any tensor)
  peak RSS N MiB      (getrusage ru_maxrss of this process)
A case predicted to need more than --mem-limit-mib prints "skipped: ..." and exits 3
before allocating anything large; errors go to stderr with exit status 1.
"""

import argparse
import math
import os
import re
import resource
import statistics
import sys
import time

EXIT_SKIPPED = 3

# Peak live [B, H, S, S] fp32 tensors of the materialised forward+backward (plain
# autograd; also used for SDPA's math fallback).  Forward: the scores, their scaled
# (and, causal, masked) copy and the softmax output; backward: the saved softmax
# output, dP and the softmax gradient, then the masked_fill and scale gradients.
# Measured with torch 1.13 on CPU at S = 4096, H = 8 (512 MiB per tensor): peak RSS
# minus the RSS after import was 3.1 tensors for both masks; 4 leaves a margin.
QUADRATIC_TENSORS = 4.0


def rss_mib():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impl", choices=("materialised", "sdpa"), required=False)
    p.add_argument("--info", action="store_true",
                   help="print torch version, SDPA/enable_gqa support and build info, then exit")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--groups", type=int, default=None, help="kv heads G (default H)")
    p.add_argument("--dqk", type=int, default=64)
    p.add_argument("--dv", type=int, default=None, help="default Dqk")
    p.add_argument("--mask", choices=("causal", "general"), default="causal")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gqa", choices=("auto", "expand", "native"), default="auto",
                   help="SDPA with G < H: repeat_interleave k/v (expand), enable_gqa=True "
                        "(native), or native when it keeps the same kernel (auto)")
    p.add_argument("--mem-limit-mib", type=float, default=0.0,
                   help="skip (exit 3) when the predicted peak RSS exceeds this; 0: no limit")
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args(argv)
    if not a.info and a.impl is None:
        p.error("--impl is required (or --info)")
    if a.groups is None:
        a.groups = a.heads
    if a.dv is None:
        a.dv = a.dqk
    for name in ("batch", "seq", "heads", "groups", "dqk", "dv", "threads", "iters"):
        if getattr(a, name) < 1:
            p.error("--%s must be >= 1, got %d" % (name, getattr(a, name)))
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    if a.heads % a.groups:
        p.error("--heads %d must be a multiple of --groups %d" % (a.heads, a.groups))
    return a


def kernel_name(out):
    """Which SDPA kernel produced `out`, from its autograd node's name."""
    fn = out.grad_fn
    name = type(fn).__name__ if fn is not None else "None"
    low = name.lower()
    if "flash" in low:
        return "flash", name
    if "efficient" in low:
        return "efficient", name
    if "cudnn" in low:
        return "cudnn", name
    return "math", name


def sdpa_accepts_enable_gqa(torch, F):
    q = torch.zeros(1, 2, 4, 8)
    k = torch.zeros(1, 1, 4, 8)
    try:
        F.scaled_dot_product_attention(q, k, k, enable_gqa=True)
        return True
    except TypeError:
        return False


def make_forward(torch, a, q, k, v, native_gqa):
    """A closure computing the output from q [B,H,S,D], k [B,G,S,D], v [B,G,S,Dv]."""
    F = torch.nn.functional
    rep = a.heads // a.groups
    causal = a.mask == "causal"

    def expand(t):
        return t if rep == 1 else t.repeat_interleave(rep, dim=1)

    if a.impl == "sdpa":
        if native_gqa and rep > 1:
            return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                          enable_gqa=True)
        return lambda: F.scaled_dot_product_attention(q, expand(k), expand(v),
                                                      is_causal=causal)

    scale = 1.0 / math.sqrt(a.dqk)
    future = None
    if causal:  # query i must not see key j > i; built once, like a model's buffer
        future = torch.ones(a.seq, a.seq, dtype=torch.bool).triu_(1)

    def fwd():
        s = torch.matmul(q, expand(k).transpose(-2, -1)) * scale
        if future is not None:
            s = s.masked_fill(future, float("-inf"))
        return torch.matmul(torch.softmax(s, dim=-1), expand(v))

    return fwd


def probe_kernel(torch, a, native_gqa):
    """The SDPA kernel picked for this head/mask/GQA configuration, on a small S."""
    small = argparse.Namespace(**vars(a))
    small.seq = 128
    small.batch = 1
    q = torch.randn(1, a.heads, small.seq, a.dqk, requires_grad=True)
    k = torch.randn(1, a.groups, small.seq, a.dqk, requires_grad=True)
    v = torch.randn(1, a.groups, small.seq, a.dv, requires_grad=True)
    out = make_forward(torch, small, q, k, v, native_gqa)()
    return kernel_name(out)[0]


def predicted_mib(a, base, kernel, native_gqa):
    """Rough peak RSS of the case in MiB (see QUADRATIC_TENSORS)."""
    B, S, H, G, D, Dv = a.batch, a.seq, a.heads, a.groups, a.dqk, a.dv
    linear = B * S * (H * D + G * D + G * Dv + H * Dv)  # q, k, v, dout
    linear *= 2                                        # their gradients / out, lse
    if G < H and not native_gqa:
        linear += 2 * B * S * H * (D + Dv)             # expanded k, v and their grads
    quad = 0.0
    if kernel == "math":
        quad = QUADRATIC_TENSORS * B * H * S * S
        if a.mask == "causal":
            quad += S * S / 4.0                        # the bool mask (1 byte)
    return base + 4.0 * (linear + quad) / 2**20


def info(torch):
    F = torch.nn.functional
    print("torch %s" % torch.__version__)
    has_sdpa = hasattr(F, "scaled_dot_product_attention")
    print("sdpa %s" % ("yes" if has_sdpa else "no"))
    print("enable_gqa %s" % ("yes" if has_sdpa and sdpa_accepts_enable_gqa(torch, F) else "no"))
    cap = "?"
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # torch 1.13 has no torch.backends.cpu
        for line in torch.__config__.show().splitlines():
            if "CPU capability usage" in line:
                cap = line.split(":", 1)[1].strip()
    print("cpu_capability %s" % cap)
    m = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    print("blas %s" % (m.group(1) if m else "?"))
    print("mkl %s" % ("yes" if torch.backends.mkl.is_available() else "no"))
    print("rss_after_import %.0f MiB" % rss_mib())


def main(argv):
    a = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch  # after OMP_NUM_THREADS is set

    if a.info:
        info(torch)
        return 0

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    F = torch.nn.functional
    base = rss_mib()

    native_gqa = False
    gqa_mode = "-" if a.groups == a.heads else "repeat_interleave"
    kernel = "math"  # the materialised path is plain autograd
    if a.impl == "sdpa":
        if not hasattr(F, "scaled_dot_product_attention"):
            print("error: torch %s has no scaled_dot_product_attention (needs >= 2.0)"
                  % torch.__version__, file=sys.stderr)
            return 1
        if a.groups < a.heads and a.gqa != "expand":
            if not sdpa_accepts_enable_gqa(torch, F):
                if a.gqa == "native":
                    print("error: torch %s's SDPA has no enable_gqa (needs >= 2.5)"
                          % torch.__version__, file=sys.stderr)
                    return 1
                gqa_mode = "repeat_interleave(no-enable_gqa)"
            else:
                k_native = probe_kernel(torch, a, True)
                k_expand = probe_kernel(torch, a, False)
                if a.gqa == "native" or k_native == k_expand or k_native == "flash":
                    native_gqa = True
                    gqa_mode = "enable_gqa"
                else:
                    gqa_mode = "repeat_interleave(enable_gqa->%s)" % k_native
        kernel = probe_kernel(torch, a, native_gqa)

    need = predicted_mib(a, base, kernel, native_gqa)
    if a.mem_limit_mib > 0 and need > a.mem_limit_mib:
        print("skipped: predicted peak %.0f MiB (%s) > limit %.0f MiB"
              % (need, "S x S scores" if kernel == "math" else "inputs", a.mem_limit_mib))
        return EXIT_SKIPPED

    B, S, H, G, D, Dv = a.batch, a.seq, a.heads, a.groups, a.dqk, a.dv
    q = torch.randn(B, H, S, D, requires_grad=True)
    k = torch.randn(B, G, S, D, requires_grad=True)
    v = torch.randn(B, G, S, Dv, requires_grad=True)
    dout = torch.randn(B, H, S, Dv)
    fwd = make_forward(torch, a, q, k, v, native_gqa)

    fwd_t, bwd_t = [], []
    used = None
    for i in range(a.warmup + a.iters):
        q.grad = k.grad = v.grad = None
        t0 = time.perf_counter()
        out = fwd()
        t1 = time.perf_counter()
        out.backward(dout)
        t2 = time.perf_counter()
        if used is None:
            used = kernel_name(out)
        del out
        if i >= a.warmup:
            fwd_t.append(1e3 * (t1 - t0))
            bwd_t.append(1e3 * (t2 - t1))
    if not all(math.isfinite(float(x.grad.abs().sum())) for x in (q, k, v)):
        print("error: non-finite gradients", file=sys.stderr)
        return 1

    if a.impl == "sdpa":
        kernel = used[0]
        detail = used[1]
    else:
        kernel, detail = "materialised", "matmul+softmax"
    print("# impl %s torch %s kernel %s (%s) gqa %s threads %d"
          % (a.impl, torch.__version__, kernel, detail, gqa_mode, torch.get_num_threads()))
    for name, t in (("forward ", fwd_t), ("backward", bwd_t)):
        print("%s median %.3f ms (min %.3f, max %.3f, n=%d)"
              % (name, statistics.median(t), min(t), max(t), len(t)))
    print("base RSS %.1f MiB" % base)
    print("peak RSS %.1f MiB" % rss_mib())
    print("predicted RSS %.1f MiB" % need)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
