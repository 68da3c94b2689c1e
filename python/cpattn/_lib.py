"""_lib.py — loading libcpattn.so and the ctypes mirror of the structs of
include/cpattn.h that the binding passes (cpa_tensor, cpa_mask, cpa_split,
cpa_cp_config).  Nothing here knows NumPy or the Plan object; that is
__init__.py.

The structs are written out field by field in the header's order, so
ctypes lays them out as the C compiler does (native alignment).  The
tests (tests/python/test_layout.py) compile a C program that prints the
offsetof of every field and compare it with these, so a field added to the
header without an edit here fails a test instead of corrupting memory.

The library is found, in this order: $CPATTN_LIBRARY (a path to the .so),
the installed one next to this package (_install.py, written by
`cmake --install`), then the loader's search path (libcpattn.so.MAJOR.MINOR).
It is loaded RTLD_GLOBAL, after mpi4py when that is importable, so that it
binds to the MPI library mpi4py already initialised (one libmpi.so.40).
"""

import ctypes
import os

CPA_MAX_DIMS = 4
CPA_SPLIT_MAX_PIECES = 8

c_int64_p = ctypes.POINTER(ctypes.c_int64)


class Tensor(ctypes.Structure):
    """cpa_tensor: a strided fp32 view (strides in elements)."""
    _fields_ = [("data", ctypes.POINTER(ctypes.c_float)),
                ("ndim", ctypes.c_int),
                ("shape", ctypes.c_int64 * CPA_MAX_DIMS),
                ("stride", ctypes.c_int64 * CPA_MAX_DIMS)]


class Mask(ctypes.Structure):
    """cpa_mask."""
    _fields_ = [("kind", ctypes.c_int),
                ("window", ctypes.c_int64),
                ("cu_seqlens", c_int64_p),
                ("num_docs", ctypes.c_int64)]


class Split(ctypes.Structure):
    """cpa_split."""
    _fields_ = [("kind", ctypes.c_int),
                ("P", ctypes.c_int),
                ("U", ctypes.c_int),
                ("chunks_per_rank", ctypes.c_int),
                ("chunk_of", ctypes.POINTER(ctypes.c_int32))]


class CpConfig(ctypes.Structure):
    """cpa_cp_config."""
    _fields_ = [("algo", ctypes.c_int),
                ("cp_size", ctypes.c_int),
                ("window", ctypes.c_int),
                ("ulysses_degree", ctypes.c_int),
                ("tp_size", ctypes.c_int),
                ("send_recv_overlap", ctypes.c_int),
                ("mask", Mask),
                ("impl", ctypes.c_int),
                ("balance", ctypes.c_int),
                ("layout", ctypes.c_int),
                ("batch", ctypes.c_int64),
                ("seq_length", ctypes.c_int64),
                ("num_heads", ctypes.c_int64),
                ("num_kv_heads", ctypes.c_int64),
                ("head_dim", ctypes.c_int64),
                ("v_head_dim", ctypes.c_int64),
                ("softmax_scale", ctypes.c_float),
                ("num_threads", ctypes.c_int),
                ("isa", ctypes.c_int)]


# The header's enums, by the names the tools' flags use.
LAYOUTS = {"bshd": 0, "sbhd": 1, "bnsd": 2}
MASKS = {"general": 0, "causal": 1}
IMPLS = {"fast": 0, "reference": 1}
BALANCES = {"zigzag": 0, "documents": 1}
ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3}

# (name, restype, argtypes) of every function the binding calls.
_PROTOS = [
    ("cpa_status_string", ctypes.c_char_p, [ctypes.c_int]),
    ("cpa_last_error", ctypes.c_char_p, []),
    ("cpa_clear_error", None, []),
    ("cpa_algo_count", ctypes.c_int, []),
    ("cpa_algo_name", ctypes.c_char_p, [ctypes.c_int]),
    ("cpa_algo_parse", ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]),
    ("cpa_plan_create", ctypes.c_int,
     [ctypes.c_void_p, ctypes.POINTER(CpConfig), ctypes.POINTER(ctypes.c_void_p)]),
    ("cpa_plan_destroy", None, [ctypes.c_void_p]),
    ("cpa_plan_split", Split, [ctypes.c_void_p]),
    ("cpa_plan_rank", ctypes.c_int, [ctypes.c_void_p]),
    ("cpa_plan_local_seq", ctypes.c_int64, [ctypes.c_void_p]),
    ("cpa_plan_config", ctypes.POINTER(CpConfig), [ctypes.c_void_p]),
    ("cpa_plan_saved_create", ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]),
    ("cpa_plan_saved_destroy", None, [ctypes.c_void_p]),
    ("cpa_plan_forward", ctypes.c_int,
     [ctypes.c_void_p, ctypes.c_void_p, Tensor, Tensor, Tensor, Tensor, Tensor]),
    ("cpa_plan_backward", ctypes.c_int,
     [ctypes.c_void_p, ctypes.c_void_p] + [Tensor] * 9),
    ("cpa_plan_set_documents", ctypes.c_int, [ctypes.c_void_p, c_int64_p, ctypes.c_int64]),
    ("cpa_split_rows", ctypes.c_int64, [Split, ctypes.c_int64, ctypes.c_int]),
    ("cpa_split_positions", ctypes.c_int, [Split, ctypes.c_int64, ctypes.c_int, c_int64_p]),
    ("cpa_shard", ctypes.c_int, [Split, ctypes.c_int, Tensor, Tensor]),
    ("cpa_unshard", ctypes.c_int, [Split, ctypes.c_int, Tensor, Tensor]),
    ("cpa_set_comm_timeout", None, [ctypes.c_double]),
    ("cpa_comm_timeout", ctypes.c_double, []),
]


def _candidates():
    env = os.environ.get("CPATTN_LIBRARY")
    if env:
        return [env]
    out = []
    try:
        from . import _install  # written by cmake --install
        here = os.path.dirname(os.path.abspath(__file__))
        out.append(os.path.normpath(os.path.join(here, _install.LIBDIR_FROM_PACKAGE,
                                                 _install.LIBRARY)))
        out.append(_install.LIBRARY)
    except ImportError:
        pass
    out.append("libcpattn.so.0.1")
    return out


def _load():
    try:  # bind to the MPI mpi4py initialises (and let it initialise it)
        from mpi4py import MPI  # noqa: F401
    except ImportError:
        pass
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            break
        except OSError as e:
            errors.append("%s: %s" % (path, e))
    else:
        raise ImportError("cpattn: cannot load the shared library libcpattn.so (set "
                          "CPATTN_LIBRARY to its path, or install cpattn with cmake --install): "
                          + "; ".join(errors))
    for name, res, args in _PROTOS:
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    return lib


lib = _load()
