"""test_errors.py — the binding's failures, under `mpiexec -n 2 python3
test_errors.py`: a bad configuration raises cpattn.Error with the
library's message on EVERY rank (plan creation is collective); bad names,
dtypes and shapes raise clear Python errors; float64 and non-contiguous
inputs are converted and give the same result; float32 C-contiguous input
is passed without a copy.  Prints "N passed, N failed" on rank 0.
"""
import sys

import numpy as np
from mpi4py import MPI

import cpattn

comm = MPI.COMM_WORLD
P, rank = comm.Get_size(), comm.Get_rank()
B, S, H, G, D = 1, 32, 4, 2, 8
passed = failed = 0


def check(name, ok, why=""):
    global passed, failed
    ok = comm.allreduce(1 if ok else 0, op=MPI.MIN) == 1  # every rank must agree
    if rank == 0:
        print("%s %s%s" % ("ok  " if ok else "FAIL", name, "" if ok else ": " + why), flush=True)
    passed, failed = passed + ok, failed + (not ok)


def raises(exc, words, fn):
    """(True, message) if fn() raises `exc` whose message holds every word."""
    try:
        fn()
    except exc as e:
        msg = str(e)
        return all(w in msg for w in words), msg
    except Exception as e:  # noqa: BLE001
        return False, "raised %s: %s" % (type(e).__name__, e)
    return False, "did not raise"


def plan(**kw):
    args = dict(algo="megatron_cp_algo", batch=B, seq_length=S, num_heads=H, num_kv_heads=G,
                head_dim=D)
    args.update(kw)
    return cpattn.Plan(comm, **args)


# Collective refusals: the same message on every rank.
for name, kw, words in [
        ("ulysses heads", dict(algo="ulysses_cp_algo", num_heads=3 * P + 1, num_kv_heads=1),
         ["num-attention-heads"]),
        ("GQA rule", dict(num_heads=4, num_kv_heads=3), ["3"]),
        ("window does not divide", dict(cp_window_size=P + 1), ["cp-window-size"]),
        ("context size", dict(context_parallel_size=P + 1), ["context-parallel-size"]),
        ("hybrid without degree", dict(algo="hybrid_cp_algo"), ["ulysses"]),
        ("bad documents", dict(cu_seqlens=[0, 20, 10, S]), ["cu_seqlens"])]:
    ok, msg = raises(cpattn.Error, words, lambda: plan(**kw))
    msgs = comm.allgather(msg)
    check("refused on every rank with one message: " + name,
          ok and len(set(msgs)) == 1, msg)

# A configuration only one rank gets wrong: still an error on every rank.
ok, msg = raises(cpattn.Error, [], lambda: plan(num_heads=H if rank == 0 else 2 * H + 1))
check("one rank's bad configuration raises on every rank", ok, msg)

ok, msg = raises(cpattn.Error, ["megatron_cp_algo"], lambda: plan(algo="ring"))
check("unknown algorithm names the choices", ok, msg)
ok, msg = raises(ValueError, ["causal", "general"], lambda: plan(mask="sliding"))
check("unknown mask names the choices", ok, msg)
ok, msg = raises(ValueError, ["bshd"], lambda: plan(layout="bhsd"))
check("unknown layout names the choices", ok, msg)

p = plan()
rng = np.random.default_rng(1)
Q = rng.standard_normal((B, S, H, D)).astype(np.float32)
K = rng.standard_normal((B, S, G, D)).astype(np.float32)
q, k, v = p.shard(Q), p.shard(K), p.shard(K)
out, lse = p.forward(q, k, v)

ok, msg = raises(TypeError, ["q", "int64", "float32"], lambda: p.forward(q.astype(np.int64), k, v))
check("integer dtype refused naming the argument", ok, msg)
ok, msg = raises(ValueError, ["k", "shape"], lambda: p.forward(q, q, v))
check("wrong shape refused naming the argument", ok, msg)
ok, msg = raises(ValueError, ["S=16"], lambda: p.shard(Q[:, :16]))
check("shard of a wrong-length array refused", ok, msg)

o64, l64 = p.forward(q.astype(np.float64), k.astype(np.float64), v)
check("float64 converted, same result", np.array_equal(o64, out) and np.array_equal(l64, lse))
qnc = np.asfortranarray(q)
onc, _ = p.forward(qnc, k, v)
check("non-contiguous converted, same result", np.array_equal(onc, out))
check("float32 C-contiguous is not copied", cpattn._f32("q", q) is q)

saved = p.saved()
out2, lse2 = p.forward(q, k, v, saved)
g1 = p.backward(q, k, v, out2, lse2, out2, saved)
g2 = p.backward(q, k, v, out2, lse2, out2)
check("backward with a Saved state equals the rebuilding one",
      all(np.array_equal(a, b) for a, b in zip(g1, g2)))
p.close()
ok, msg = raises(ValueError, ["closed"], lambda: p.forward(q, k, v))
check("a closed plan is refused", ok, msg)

if rank == 0:
    print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
