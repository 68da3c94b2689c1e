"""cpattn — context-parallel attention over MPI, from Python.

A thin binding (ctypes) over the installed shared library libcpattn.so; see
docs/python.md for why ctypes, and the C header include/cpattn.h for what
each call does.  NumPy arrays in, NumPy arrays out; cpattn.torch wraps the
same plan as a torch.autograd.Function.

    from mpi4py import MPI
    import cpattn
    plan = cpattn.Plan(MPI.COMM_WORLD, algo="megatron_cp_algo", batch=B, seq_length=S,
                       num_heads=H, num_kv_heads=G, head_dim=D, mask="causal")
    q = plan.shard(q_global)                 # [B, S, H, D] -> this rank's rows
    out, lse = plan.forward(q, k, v)         # local rows
    dq, dk, dv = plan.backward(q, k, v, out, lse, dout)
    o_global = plan.unshard(out)

Arrays are float32 in the plan's layout ("bshd" [B, S, N, D] by default,
"sbhd" [S, B, N, D], "bnsd" [B, N, S, D]); lse is [B, H, S].  A float32
C-contiguous array is passed to the library without a copy; another float
dtype (float16, float64) or a non-contiguous array is copied into a float32
C-contiguous one; integer, complex or object arrays are refused (TypeError).
Every failure of the library raises cpattn.Error with the library's message;
plan creation is collective, so a bad configuration raises on every rank.
"""

import ctypes

import numpy as np

from . import _lib
from ._lib import lib

__all__ = ["Error", "Plan", "Saved", "algorithms", "set_comm_timeout", "comm_timeout",
           "__version__"]

try:
    from ._install import VERSION as __version__
except ImportError:  # used from the source tree
    __version__ = "0.1.0"


class Error(RuntimeError):
    """A cpattn call failed: `status` is the cpa_status code, `status_name` its
    name ("invalid argument", ...), and the message is the library's
    cpa_last_error()."""

    def __init__(self, status, message):
        self.status = int(status)
        self.status_name = lib.cpa_status_string(self.status).decode()
        super().__init__("%s (%s)" % (message, self.status_name))


def _check(status, what=None):
    if status != 0:
        msg = lib.cpa_last_error().decode(errors="replace")
        lib.cpa_clear_error()
        raise Error(status, "%s: %s" % (what, msg) if what else msg)


def algorithms():
    """The algorithm names of the library's table, in id order."""
    return [lib.cpa_algo_name(i).decode() for i in range(lib.cpa_algo_count())]


def set_comm_timeout(seconds):
    """Bound every wait of the library on another rank (process-wide; 0: none)."""
    lib.cpa_set_comm_timeout(float(seconds))


def comm_timeout():
    return lib.cpa_comm_timeout()


def _choice(name, value, table):
    if value not in table:
        raise ValueError("cpattn: %s=%r: expected one of %s" % (name, value, ", ".join(table)))
    return table[value]


def _f32(name, a):
    """`a` as a float32 C-contiguous ndarray: itself when it already is one,
    else a converted copy; TypeError for dtypes that are not floating."""
    a = np.asarray(a)
    if a.dtype != np.float32:
        if a.dtype.kind != "f":
            raise TypeError("cpattn: %s has dtype %s; attention takes float32 arrays (other "
                            "floating dtypes are converted)" % (name, a.dtype))
        a = a.astype(np.float32)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


class Saved:
    """What one forward keeps for its backward (cpa_plan_saved): pass the same
    object to forward and to the backward of that forward, one per layer in
    flight.  Optional: without it the backward rebuilds what it needs."""

    def __init__(self, plan):
        self._plan = plan  # keeps the plan (and the library) alive
        self._p = ctypes.c_void_p()
        _check(lib.cpa_plan_saved_create(plan._handle(), ctypes.byref(self._p)),
               "cpattn.Saved")

    def __del__(self):
        if getattr(self, "_p", None) is not None and self._p.value:
            lib.cpa_plan_saved_destroy(self._p)
            self._p = None


class Plan:
    """A context-parallel attention plan over an mpi4py communicator
    (cpa_plan_create).  Keywords follow the flags of `cpattn attn` / `cpattn
    train` (dashes as underscores):

      algo                    --context-parallel-algo: ulysses_cp_algo, megatron_cp_algo,
                              hybrid_cp_algo, allgather_cp_algo (cpattn.algorithms())
      context_parallel_size   --context-parallel-size (default: the communicator's size)
      cp_window_size          --cp-window-size W (double ring when > 1)
      ulysses_degree_in_cp    --ulysses-degree-in-cp U (hybrid)
      send_recv_overlap       --use-cp-send-recv-overlap
      mask                    --attention-mask-type: "causal" or "general"
      sliding_window          --sliding-window N (0: none)
      cu_seqlens              packed documents: [num_docs + 1] cumulative lengths (None: one)
      cp_load_balance         --cp-load-balance: "zigzag" or "documents"
      layout                  "bshd", "sbhd" or "bnsd" (megatron_cp_in_bnsd=True: "bnsd")
      tensor_model_parallel_size   the TP head rules (1)
      batch, seq_length (global S), num_heads H, num_kv_heads G (default H),
      head_dim Dqk, v_head_dim Dv (default Dqk), softmax_scale (default 1/sqrt(Dqk)),
      impl "fast" or "reference", num_threads (0: OpenMP's default), isa "auto", "avx512", ...
      comm_timeout            seconds, process-wide (cpattn.set_comm_timeout); None: unchanged

    Creation is collective over `comm`: every rank gets the same verdict,
    and a bad configuration raises cpattn.Error on every rank, naming the
    flag and the rule.  close() (or the end of a `with` block) destroys the
    plan; so does garbage collection while MPI is still initialised.
    """

    def __init__(self, comm, *, batch, seq_length, num_heads, head_dim, algo="megatron_cp_algo",
                 num_kv_heads=None, v_head_dim=None, mask="causal", sliding_window=0,
                 cu_seqlens=None, cp_window_size=1, ulysses_degree_in_cp=None,
                 send_recv_overlap=False, cp_load_balance="zigzag", layout="bshd",
                 megatron_cp_in_bnsd=False, tensor_model_parallel_size=1,
                 context_parallel_size=None, softmax_scale=None, impl="fast", num_threads=0,
                 isa="auto", comm_timeout=None):
        from mpi4py import MPI
        self._MPI = MPI
        self._p = ctypes.c_void_p()
        self.comm = comm
        if megatron_cp_in_bnsd:
            layout = "bnsd"
        algo_id = ctypes.c_int()
        _check(lib.cpa_algo_parse(str(algo).encode(), ctypes.byref(algo_id)), "algo")
        c = _lib.CpConfig()
        c.algo = algo_id.value
        c.cp_size = comm.Get_size() if context_parallel_size is None else int(context_parallel_size)
        c.window = int(cp_window_size)
        c.ulysses_degree = 0 if ulysses_degree_in_cp is None else int(ulysses_degree_in_cp)
        c.tp_size = int(tensor_model_parallel_size)
        c.send_recv_overlap = 1 if send_recv_overlap else 0
        c.mask.kind = _choice("mask", mask, _lib.MASKS)
        c.mask.window = int(sliding_window or 0)
        self._docs = None
        if cu_seqlens is not None:
            self._docs = np.ascontiguousarray(cu_seqlens, dtype=np.int64)
            if self._docs.ndim != 1:
                raise ValueError("cpattn: cu_seqlens must be 1-D [num_docs + 1]")
            c.mask.cu_seqlens = self._docs.ctypes.data_as(_lib.c_int64_p)
            c.mask.num_docs = self._docs.shape[0] - 1
        c.impl = _choice("impl", impl, _lib.IMPLS)
        c.balance = _choice("cp_load_balance", cp_load_balance, _lib.BALANCES)
        c.layout = _choice("layout", layout, _lib.LAYOUTS)
        c.batch, c.seq_length = int(batch), int(seq_length)
        c.num_heads = int(num_heads)
        c.num_kv_heads = int(num_heads if num_kv_heads is None else num_kv_heads)
        c.head_dim = int(head_dim)
        c.v_head_dim = int(head_dim if v_head_dim is None else v_head_dim)
        c.softmax_scale = 0.0 if softmax_scale is None else float(softmax_scale)
        c.num_threads = int(num_threads)
        c.isa = _choice("isa", isa, _lib.ISAS)
        if comm_timeout is not None:
            set_comm_timeout(comm_timeout)
        handle = ctypes.c_void_p(MPI._handleof(comm))
        _check(lib.cpa_plan_create(handle, ctypes.byref(c), ctypes.byref(self._p)),
               "cpattn.Plan")
        self.layout = layout
        self.algo = str(algo)
        self.batch, self.seq_length = c.batch, c.seq_length
        self.num_heads, self.num_kv_heads = c.num_heads, c.num_kv_heads
        self.head_dim, self.v_head_dim = c.head_dim, c.v_head_dim
        self.rank = lib.cpa_plan_rank(self._p)
        self.size = c.cp_size
        self.local_seq = lib.cpa_plan_local_seq(self._p)

    # ---- lifetime ----------------------------------------------------------
    def _handle(self):
        if not self._p or not self._p.value:
            raise ValueError("cpattn: the plan is closed")
        return self._p

    def close(self):
        """Destroy the plan (frees its communicators and buffers)."""
        p, self._p = getattr(self, "_p", None), None
        if p is not None and p.value and not self._MPI.Is_finalized():
            lib.cpa_plan_destroy(p)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: MPI may be gone; the OS frees it
            pass

    def saved(self):
        """A new Saved state for one forward/backward pair."""
        return Saved(self)

    # ---- shapes -------------------------------------------------------------
    def _split(self):
        return lib.cpa_plan_split(self._handle())

    def _dims(self, a):
        """(B, S, N, D) of an array in the plan's layout."""
        if a.ndim != 4:
            raise ValueError("cpattn: expected a 4-d array in layout %s, got shape %s"
                             % (self.layout, a.shape))
        s = a.shape
        if self.layout == "bshd":
            return s[0], s[1], s[2], s[3]
        if self.layout == "sbhd":
            return s[1], s[0], s[2], s[3]
        return s[0], s[2], s[1], s[3]

    def _shape(self, B, S, N, D):
        if self.layout == "bshd":
            return (B, S, N, D)
        if self.layout == "sbhd":
            return (S, B, N, D)
        return (B, N, S, D)

    def _view(self, a):
        """A cpa_tensor logical [B, S, N, D] view of a float32 C-contiguous array."""
        t = _lib.Tensor()
        t.data = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        t.ndim = 4
        st = [x // 4 for x in a.strides]
        B, S, N, D = self._dims(a)
        if self.layout == "bshd":
            strides = st
        elif self.layout == "sbhd":
            strides = [st[1], st[0], st[2], st[3]]
        else:
            strides = [st[0], st[2], st[1], st[3]]
        for i, (n, s) in enumerate(zip((B, S, N, D), strides)):
            t.shape[i], t.stride[i] = n, s
        return t

    @staticmethod
    def _lse3(a):
        """lse [B, H, S] as the 3-d view the plans take."""
        t = _lib.Tensor()
        t.data = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        t.ndim = 3
        for i, n in enumerate(a.shape):
            t.shape[i], t.stride[i] = n, a.strides[i] // 4
        return t

    @staticmethod
    def _lse_view(a):
        """lse [B, H, S] as the logical [B, S, H, 1] view the library takes."""
        B, H, S = a.shape
        t = _lib.Tensor()
        t.data = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        t.ndim = 4
        for i, (n, s) in enumerate(zip((B, S, H, 1), (H * S, 1, S, 1))):
            t.shape[i], t.stride[i] = n, s
        return t

    def _local(self, name, a, heads, dim):
        a = _f32(name, a)
        want = self._shape(self.batch, self.local_seq, heads, dim)
        if a.shape != want:
            raise ValueError("cpattn: %s has shape %s; this rank's shard in layout %s is %s "
                             "(B, local rows %d, heads, head dim)"
                             % (name, a.shape, self.layout, want, self.local_seq))
        return a

    def _lse(self, a):
        a = _f32("lse", a)
        want = (self.batch, self.num_heads, self.local_seq)
        if a.shape != want:
            raise ValueError("cpattn: lse has shape %s; expected [B, H, local rows] = %s"
                             % (a.shape, want))
        return a

    # ---- sharding -----------------------------------------------------------
    def rows(self, rank=None):
        """Local rows of `rank` (default: this rank)."""
        r = self.rank if rank is None else int(rank)
        return lib.cpa_split_rows(self._split(), self.seq_length, r)

    def positions(self):
        """Global positions of this rank's local rows, in local order (int64), for RoPE."""
        pos = np.empty(self.local_seq, dtype=np.int64)
        _check(lib.cpa_split_positions(self._split(), self.seq_length, self.rank,
                                       pos.ctypes.data_as(_lib.c_int64_p)), "positions")
        return pos

    def shard(self, global_array):
        """This rank's rows of a global array (whole sequence, plan's layout)."""
        g = _f32("global array", global_array)
        B, S, N, D = self._dims(g)
        if B != self.batch or S != self.seq_length:
            raise ValueError("cpattn: shard: array of shape %s has B=%d, S=%d; the plan has "
                             "batch=%d, seq_length=%d" % (g.shape, B, S, self.batch,
                                                          self.seq_length))
        local = np.empty(self._shape(B, self.local_seq, N, D), dtype=np.float32)
        _check(lib.cpa_shard(self._split(), self.rank, self._view(g), self._view(local)),
               "shard")
        return local

    def unshard(self, local):
        """The global array from every rank's local rows (collective: an
        all-gather over the plan's communicator; every rank gets it)."""
        a = _f32("local array", local)
        B, Sl, N, D = self._dims(a)
        parts = self.comm.allgather(a)
        g = np.empty(self._shape(B, self.seq_length, N, D), dtype=np.float32)
        split = self._split()
        for r, part in enumerate(parts):
            _check(lib.cpa_unshard(split, r, self._view(part), self._view(g)), "unshard")
        return g

    def unshard_lse(self, lse):
        """The global lse [B, H, S] from every rank's [B, H, local rows] (collective)."""
        a = _f32("lse", lse)
        parts = self.comm.allgather(a)
        B, H = a.shape[0], a.shape[1]
        g = np.empty((B, H, self.seq_length), dtype=np.float32)
        split = self._split()
        for r, part in enumerate(parts):
            _check(lib.cpa_unshard(split, r, self._lse_view(part), self._lse_view(g)),
                   "unshard_lse")
        return g

    def set_documents(self, cu_seqlens):
        """Per-call packed documents (cpa_plan_set_documents; collective)."""
        if cu_seqlens is None:
            _check(lib.cpa_plan_set_documents(self._handle(), None, 0), "set_documents")
            return
        d = np.ascontiguousarray(cu_seqlens, dtype=np.int64)
        _check(lib.cpa_plan_set_documents(self._handle(), d.ctypes.data_as(_lib.c_int64_p),
                                          d.shape[0] - 1), "set_documents")

    # ---- attention ----------------------------------------------------------
    def forward(self, q, k, v, saved=None):
        """(out, lse) of this rank's query rows: out in the plan's layout
        [.., H, Dv], lse [B, H, local rows] (natural log).  Collective."""
        H, G, D, Dv = self.num_heads, self.num_kv_heads, self.head_dim, self.v_head_dim
        q = self._local("q", q, H, D)
        k = self._local("k", k, G, D)
        v = self._local("v", v, G, Dv)
        out = np.empty(self._shape(self.batch, self.local_seq, H, Dv), dtype=np.float32)
        lse = np.empty((self.batch, H, self.local_seq), dtype=np.float32)
        _check(lib.cpa_plan_forward(self._handle(), saved._p if saved else None,
                                    self._view(q), self._view(k), self._view(v),
                                    self._view(out), self._lse3(lse)), "forward")
        return out, lse

    def backward(self, q, k, v, out, lse, dout, saved=None):
        """(dq, dk, dv) of this rank's rows, given the forward's q, k, v, out
        and lse and the output gradient dout.  Collective."""
        H, G, D, Dv = self.num_heads, self.num_kv_heads, self.head_dim, self.v_head_dim
        q = self._local("q", q, H, D)
        k = self._local("k", k, G, D)
        v = self._local("v", v, G, Dv)
        out = self._local("out", out, H, Dv)
        dout = self._local("dout", dout, H, Dv)
        lse = self._lse(lse)
        dq = np.empty_like(q)
        dk = np.empty_like(k)
        dv = np.empty_like(v)
        _check(lib.cpa_plan_backward(self._handle(), saved._p if saved else None,
                                     self._view(q), self._view(k), self._view(v),
                                     self._view(out), self._lse3(lse), self._view(dout),
                                     self._view(dq), self._view(dk), self._view(dv)),
               "backward")
        return dq, dk, dv
