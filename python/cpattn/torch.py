"""cpattn.torch — a cpattn plan as a torch.autograd.Function.

    import cpattn.torch
    out = cpattn.torch.attention(q, k, v, plan)   # local rows, plan's layout
    out.sum().backward()                          # q.grad, k.grad, v.grad: cpattn's backward

Tensors are this rank's shards (plan.shard, or the rows of plan.positions()
made locally) on the CPU.  float32 contiguous tensors reach the library
without a copy (torch.Tensor.numpy() shares the memory); other floating
dtypes are computed in float32 and the results cast back to the input's
dtype.  CUDA tensors are refused: cpattn runs on CPUs.
"""

import numpy as np
import torch as _torch

__all__ = ["attention", "CpAttention"]


def _np(name, t):
    if not isinstance(t, _torch.Tensor):
        raise TypeError("cpattn.torch: %s must be a torch.Tensor, got %s" % (name, type(t)))
    if t.device.type != "cpu":
        raise TypeError("cpattn.torch: %s is on %s; cpattn runs on CPUs (move it with .cpu())"
                        % (name, t.device))
    if not t.is_floating_point():
        raise TypeError("cpattn.torch: %s has dtype %s; attention takes floating tensors"
                        % (name, t.dtype))
    return t.detach().to(_torch.float32).contiguous().numpy()


class CpAttention(_torch.autograd.Function):
    """Context-parallel attention; forward and backward are collective over
    the plan's communicator (every rank must call both)."""

    @staticmethod
    def forward(ctx, q, k, v, plan, saved):
        qn, kn, vn = _np("q", q), _np("k", k), _np("v", v)
        out, lse = plan.forward(qn, kn, vn, saved)
        ctx.plan, ctx.saved = plan, saved
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        out_t, lse_t = _torch.from_numpy(out), _torch.from_numpy(lse)
        ctx.save_for_backward(_torch.from_numpy(qn), _torch.from_numpy(kn),
                              _torch.from_numpy(vn), out_t, lse_t)
        return out_t.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.plan.backward(q.numpy(), k.numpy(), v.numpy(), out.numpy(),
                                       lse.numpy(), _np("dout", dout), ctx.saved)
        grads = [_torch.from_numpy(np.asarray(g)).to(dt)
                 for g, dt in zip((dq, dk, dv), ctx.dtypes)]
        return grads[0], grads[1], grads[2], None, None


def attention(q, k, v, plan, saved=None):
    """Softmax attention of this rank's rows through `plan` (a cpattn.Plan),
    differentiable in q, k and v.  `saved` (plan.saved()) keeps the forward's
    state for the backward (Ulysses and hybrid then skip rebuilding it); one
    per call in flight."""
    return CpAttention.apply(q, k, v, plan, saved)
