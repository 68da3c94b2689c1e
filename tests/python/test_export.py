"""test_export.py CPATTN WORKDIR — `cpattn export` end to end, checked by
an independent implementation of the model:

  1. train a tiny GQA model (2 layers, C = 64, H = 4, G = 2, SwiGLU 96,
     vocabulary 32) for 600 iterations with --save, on 2 ranks with ring
     attention (so the weights are far from their initialisation and the
     checkpoint is the CP one users write);
  2. `cpattn export --load ckpt --out hf --loss-tokens tok.npy` on a batch
     of copy-task sequences: the Llama folder, and cpattn's own mean loss
     of each sequence;
  3. read model.safetensors BY HAND (8-byte header length, JSON, raw
     little-endian float32; not the safetensors package) and config.json,
     and run a Llama forward written here in PyTorch (float64) with the
     Hugging Face conventions: rotate_half RoPE with rope_theta, RMSNorm
     with rms_norm_eps, repeat_kv GQA, SwiGLU, the LM head tied to
     model.embed_tokens;
  4. compare each sequence's loss with cpattn's.

Tolerance: cpattn computes in float32 (fp32 GEMMs over C = 64 and F = 96,
fp32 attention); the float64 reference differs from it by fp32 rounding
(measured: ~1e-8 relative on the mean loss); 1e-5 relative is allowed.  A wrong layout (q/k
rows permuted for interleaved RoPE, gate and up swapped, a transposed
matrix, the wrong KV head of a query head) moves the trained model's
losses by far more (checked: a few of these are tried and must fail).
Also: a missing checkpoint and a corrupted one are refused (exit 2,
message naming the folder) and leave an existing export untouched.
Prints "N passed, N failed".
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import torch

cpattn, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
mpiexec = os.environ.get("MPIEXEC", "mpiexec")
timeout = int(os.environ.get("CPATTN_TEST_TIMEOUT", "120"))
passed = failed = 0
REL_TOL = 1e-5


def check(name, ok, why=""):
    global passed, failed
    print("%s %s%s" % ("ok  " if ok else "FAIL", name, "" if ok or not why else ": " + why),
          flush=True)
    passed, failed = passed + bool(ok), failed + (not ok)


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


L, C, H, G, F, V, S = 2, 64, 4, 2, 96, 32, 64
ckpt, hf = os.path.join(work, "ckpt"), os.path.join(work, "hf")
r = run([mpiexec, "-n", "2", "--oversubscribe", cpattn, "train", "--context-parallel-size", "2",
         "--context-parallel-algo", "megatron_cp_algo", "--use-cp-send-recv-overlap",
         "--num-layers", str(L), "--hidden-size", str(C), "--num-attention-heads", str(H),
         "--num-query-groups", str(G), "--ffn-hidden-size", str(F), "--vocab-size", str(V),
         "--seq-length", str(S), "--micro-batch-size", "4", "--train-iters", "600", "--lr", "1e-2",
         "--min-lr", "3e-3", "--lr-warmup-iters", "10",
         "--eval-interval", "0", "--eval-iters", "1", "--log-interval", "40", "--save", ckpt,
         "--overwrite-save"])
check("train a tiny model with --save", r.returncode == 0, r.stdout[-600:] + r.stderr[-600:])

# Copy-task sequences (data.c): h random tokens in 2..V-1, the marker 1, the copy.
rng = np.random.default_rng(5)
h = S // 2
seqs = []
for _ in range(4):
    first = rng.integers(2, V, h)
    seqs.append(np.concatenate([first, [1], first])[: S + 1])
tokens = np.array(seqs, dtype=np.float32)
np.save(os.path.join(work, "tok.npy"), tokens)
r = run([cpattn, "export", "--load", ckpt, "--out", hf, "--loss-tokens",
         os.path.join(work, "tok.npy")])
check("cpattn export", r.returncode == 0, r.stdout[-600:] + r.stderr[-600:])
cp_loss = [float(line.split("=")[1]) for line in r.stdout.splitlines() if line.startswith("loss[")]
check("cpattn printed one loss per sequence", len(cp_loss) == len(seqs), r.stdout[-400:])


def read_safetensors(path):
    with open(path, "rb") as fh:
        blob = fh.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode())
    data = blob[8 + n:]
    out, spans = {}, []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", t
        b, e = t["data_offsets"]
        spans.append((b, e))
        a = np.frombuffer(data[b:e], dtype="<f4").reshape(t["shape"])
        out[name] = torch.from_numpy(a.astype(np.float64))
    spans.sort()
    holes = any(spans[i][1] != spans[i + 1][0] for i in range(len(spans) - 1))
    whole = spans[0][0] == 0 and spans[-1][1] == len(data) and not holes
    return out, header, whole, (8 + n) % 8 == 0


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def llama_losses(w, cfg, toks, perm_qk=False, swap_mlp=False, kv_of=None):
    """Mean next-token loss of each sequence under the HF Llama model `w`."""
    Cc, Hh, Gg = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg["head_dim"]
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    ids = torch.from_numpy(toks.astype(np.int64))
    x_ids, y_ids = ids[:, :-1], ids[:, 1:]
    B, T = x_ids.shape
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    freqs = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    x = w["model.embed_tokens.weight"][x_ids]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for layer in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        hdn = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (hdn @ w[p + "self_attn.q_proj.weight"].T).view(B, T, Hh, D).transpose(1, 2)
        k = (hdn @ w[p + "self_attn.k_proj.weight"].T).view(B, T, Gg, D).transpose(1, 2)
        v = (hdn @ w[p + "self_attn.v_proj.weight"].T).view(B, T, Gg, D).transpose(1, 2)
        if perm_qk:  # what interleaved-pair RoPE would need: must NOT match
            idx = torch.cat([torch.arange(0, D, 2), torch.arange(1, D, 2)])
            q, k = q[..., idx], k[..., idx]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        group = torch.arange(Hh) // (Hh // Gg) if kv_of is None else kv_of
        k, v = k[:, group], v[:, group]  # repeat_kv
        s = (q @ k.transpose(-1, -2)) / D ** 0.5
        a = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
        x = x + a.transpose(1, 2).reshape(B, T, Hh * D) @ w[p + "self_attn.o_proj.weight"].T
        hdn = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]
        if swap_mlp:
            gate, up = up, gate
        m = torch.nn.functional.silu(hdn @ gate.T) * (hdn @ up.T)
        x = x + m @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    logits = x @ w["model.embed_tokens.weight"].T  # tie_word_embeddings
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           y_ids.reshape(-1), reduction="none")
    return ce.view(B, T).mean(1).tolist()


if os.path.exists(os.path.join(hf, "model.safetensors")):
    w, header, whole, aligned = read_safetensors(os.path.join(hf, "model.safetensors"))
    check("safetensors: data fully indexed without holes, 8-byte aligned", whole and aligned)
    with open(os.path.join(hf, "config.json")) as fh:
        cfg = json.load(fh)
    want = {"model_type": "llama", "hidden_size": C, "intermediate_size": F,
            "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": G,
            "vocab_size": V, "tie_word_embeddings": True, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5, "hidden_act": "silu"}
    bad = {k: cfg.get(k) for k, v in want.items() if cfg.get(k) != v}
    check("config.json: Llama fields", not bad, str(bad))
    names = {"model.embed_tokens.weight", "model.norm.weight"} | {
        "model.layers.%d.%s.weight" % (i, n) for i in range(L) for n in
        ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
         "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    check("safetensors: exactly Llama's tensor names", set(w) == names,
          str(sorted(set(w) ^ names)))
    shapes_ok = (tuple(w["model.layers.0.self_attn.k_proj.weight"].shape) == (G * C // H, C) and
                 tuple(w["model.layers.0.mlp.down_proj.weight"].shape) == (C, F))
    check("safetensors: [out, in] shapes", shapes_ok)
    ref = llama_losses(w, cfg, tokens)
    rel = max(abs(a - b) / abs(b) for a, b in zip(cp_loss, ref)) if cp_loss else 1.0
    check("independent PyTorch Llama reproduces cpattn's losses (max rel err %.2e, tol %.0e; "
          "cpattn %s)" % (rel, REL_TOL, ", ".join("%.5f" % x for x in cp_loss)), rel <= REL_TOL,
          "reference %s" % ref)
    untrained = abs(np.log(V) - np.mean(ref)) > 0.3
    check("the trained model is far from uniform (mean loss %.3f vs ln V %.3f)"
          % (np.mean(ref), np.log(V)), untrained)
    for what, kw in [("interleaved-RoPE permutation of q/k", {"perm_qk": True}),
                     ("gate and up swapped", {"swap_mlp": True}),
                     ("KV heads assigned round-robin", {"kv_of": torch.arange(H) % G})]:
        wrong = llama_losses(w, cfg, tokens, **kw)
        rel_w = max(abs(a - b) / abs(b) for a, b in zip(cp_loss, wrong)) if cp_loss else 0.0
        check("a wrong convention (%s) does not match (rel err %.2e)" % (what, rel_w),
              rel_w > 100 * REL_TOL)

# Bad input: a missing checkpoint, a corrupted one; the export folder untouched.
before = open(os.path.join(hf, "model.safetensors"), "rb").read() if os.path.isdir(hf) else b""
r = run([cpattn, "export", "--load", os.path.join(work, "nothing"), "--out", hf])
check("missing checkpoint: exit 2 naming it", r.returncode == 2 and "nothing" in r.stderr,
      "exit %d: %s" % (r.returncode, r.stderr[-300:]))
bad_ckpt = os.path.join(work, "bad")
os.makedirs(bad_ckpt, exist_ok=True)
raw = bytearray(open(os.path.join(ckpt, "checkpoint.bin"), "rb").read())
raw[len(raw) // 2] ^= 0xFF
open(os.path.join(bad_ckpt, "checkpoint.bin"), "wb").write(raw)
r = run([cpattn, "export", "--load", bad_ckpt, "--out", hf])
check("corrupted checkpoint: refused naming the file", r.returncode == 2 and "bad" in r.stderr,
      "exit %d: %s" % (r.returncode, r.stderr[-300:]))
after = open(os.path.join(hf, "model.safetensors"), "rb").read() if os.path.isdir(hf) else b""
leftovers = [f for f in os.listdir(hf) if f not in ("model.safetensors", "config.json")] \
    if os.path.isdir(hf) else ["no folder"]
check("failed exports left the previous one intact", before == after and before and not leftovers,
      str(leftovers))
r = run([cpattn, "export", "--out", hf])
check("no --load: usage error", r.returncode == 2 and "--load" in r.stderr, r.stderr[-200:])

print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
