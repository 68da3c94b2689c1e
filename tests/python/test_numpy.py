"""test_numpy.py — the Python binding against a NumPy reference, under
`mpiexec -n P python3 test_numpy.py`: for every algorithm valid at P and
each layout, shard -> forward -> backward -> unshard on every rank, compared
with softmax attention in float64 on the whole sequence (causal and general
masks, GQA, a sliding window, packed documents).

Tolerances, with their reason: inputs are N(0, 1) / 2 in float32, so
scores are O(1) and the fp32 kernels' rounding over S = 96 keys and
D = 16 stays near 1e-6 absolute (measured: <= 1e-6); 1e-5 on out/lse and
5e-5 on the gradients (sums over S rows, and over the H/G heads of a group
for dk/dv) leave an order of magnitude of margin.  Prints "N passed, N failed" on
rank 0; exits 1 on any mismatch, on every rank.
"""
import sys

import numpy as np
from mpi4py import MPI

import cpattn

comm = MPI.COMM_WORLD
P, rank = comm.Get_size(), comm.Get_rank()
B, S, H, G, D = 2, 96, 4, 2, 16
TOL_OUT, TOL_GRAD = 1e-5, 5e-5


def perm(layout):
    """Axes of the layout's array from a [B, S, N, D] one."""
    return {"bshd": (0, 1, 2, 3), "sbhd": (1, 0, 2, 3), "bnsd": (0, 2, 1, 3)}[layout]


def visible(S, mask, window, docs):
    i = np.arange(S)[:, None]
    j = np.arange(S)[None, :]
    vis = np.ones((S, S), bool)
    if mask == "causal":
        vis &= j <= i
        if window:
            vis &= j > i - window
    elif window:
        vis &= np.abs(i - j) < window
    if docs is not None:
        doc = np.searchsorted(docs, np.arange(S), side="right") - 1
        vis &= doc[:, None] == doc[None, :]
    return vis


def reference(q, k, v, dout, vis):
    """float64 attention, [B, S, N, D] arrays: out, lse [B, H, S], dq, dk, dv."""
    q, k, v, dout = (x.astype(np.float64) for x in (q, k, v, dout))
    rep = q.shape[2] // k.shape[2]
    kk, vv = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
    scale = 1.0 / np.sqrt(q.shape[3])
    s = np.einsum("bihd,bjhd->bhij", q, kk) * scale
    s = np.where(vis, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - m)
    l = p.sum(-1, keepdims=True)
    p /= l
    lse = (m + np.log(l))[..., 0]
    out = np.einsum("bhij,bjhd->bihd", p, vv)
    dp = np.einsum("bihd,bjhd->bhij", dout, vv)
    delta = np.einsum("bihd,bihd->bhi", dout, out)[..., None]
    ds = p * (dp - delta) * scale
    dq = np.einsum("bhij,bjhd->bihd", ds, kk)
    dk = np.einsum("bhij,bihd->bjhd", ds, q)
    dv = np.einsum("bhij,bihd->bjhd", p, dout)
    Bq, Sq, Hq, Dq = q.shape
    dk = dk.reshape(Bq, Sq, k.shape[2], rep, Dq).sum(3)
    dv = dv.reshape(Bq, Sq, k.shape[2], rep, v.shape[3]).sum(3)
    return out, lse, dq, dk, dv


rng = np.random.default_rng(7)  # the same on every rank
Q = (rng.standard_normal((B, S, H, D)) / 2).astype(np.float32)
K = (rng.standard_normal((B, S, G, D)) / 2).astype(np.float32)
V = (rng.standard_normal((B, S, G, D)) / 2).astype(np.float32)
DO = (rng.standard_normal((B, S, H, D)) / 2).astype(np.float32)

cases = []
for algo in cpattn.algorithms():
    extra = {}
    if algo == "hybrid_cp_algo":
        if P < 4 or P % 2:
            continue
        extra = {"ulysses_degree_in_cp": 2}
    if algo == "ulysses_cp_algo" and (H % P or G % P and P % G):
        continue
    cases.append((algo, "bshd", "causal", 0, None, extra))
    cases.append((algo, "sbhd", "general", 0, None, extra))
cases.append(("megatron_cp_algo", "bnsd", "causal", 0, None,
              {"cp_window_size": 2, "send_recv_overlap": True} if P % 2 == 0 and P > 2 else {}))
cases.append(("megatron_cp_algo", "bshd", "causal", 24, None, {}))
cases.append(("allgather_cp_algo", "bshd", "causal", 0, np.array([0, 40, 70, S]), {}))

passed = failed = 0
for algo, layout, mask, window, docs, extra in cases:
    name = "%s %s %s%s%s%s P=%d" % (algo, layout, mask, " window=%d" % window if window else "",
                                    " docs" if docs is not None else "",
                                    "".join(" %s=%s" % kv for kv in extra.items()), P)
    try:
        plan = cpattn.Plan(comm, algo=algo, batch=B, seq_length=S, num_heads=H, num_kv_heads=G,
                           head_dim=D, mask=mask, sliding_window=window, cu_seqlens=docs,
                           layout=layout, **extra)
        ax = perm(layout)
        q, k, v, dout = (plan.shard(np.transpose(x, ax)) for x in (Q, K, V, DO))
        pos = plan.positions()
        assert pos.shape == (plan.local_seq,) and pos.dtype == np.int64
        out, lse = plan.forward(q, k, v)
        dq, dk, dv = plan.backward(q, k, v, out, lse, dout)
        inv = np.argsort(ax)
        got = [np.transpose(plan.unshard(x), inv) for x in (out, dq, dk, dv)]
        got_lse = plan.unshard_lse(lse)
        # the positions of the local rows are where shard took them from
        assert np.array_equal(np.transpose(q, inv), Q[:, pos])
        ro, rl, rdq, rdk, rdv = reference(Q, K, V, DO, visible(S, mask, window, docs))
        errs = [np.abs(got[0] - ro).max(), np.abs(got_lse - rl).max(),
                np.abs(got[1] - rdq).max(), np.abs(got[2] - rdk).max(),
                np.abs(got[3] - rdv).max()]
        ok = errs[0] <= TOL_OUT and errs[1] <= TOL_OUT and max(errs[2:]) <= TOL_GRAD
        why = "max abs err out %.2e lse %.2e dq %.2e dk %.2e dv %.2e" % tuple(errs)
        plan.close()
    except Exception as e:  # noqa: BLE001 — reported as a failure
        ok, why = False, "%s: %s" % (type(e).__name__, e)
    ok = comm.allreduce(1 if ok else 0, op=MPI.MIN) == 1
    if rank == 0:
        print("%s %s: %s" % ("ok  " if ok else "FAIL", name, why), flush=True)
    passed, failed = passed + ok, failed + (not ok)

if rank == 0:
    print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
