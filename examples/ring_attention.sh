#!/usr/bin/env bash
# Ring Attention (MindSpeed: tests_extend/.../ring_attention.sh) as Double-Ring
# Attention: windows of --cp-window-size 2 ranks, send/recv overlap on, causal
# mask load-balanced by the zigzag split.  Set W=1 for the plain ring.
source "$(dirname "$0")/common.sh"
CP=${CP:-4}
W=${W:-2}
"${MPIEXEC[@]}" -n "$CP" "$CPATTN" train "${GPT_ARGS[@]}" \
  --context-parallel-size "$CP" --context-parallel-algo megatron_cp_algo \
  --cp-window-size "$W" --use-cp-send-recv-overlap --attention-mask-type causal "$@"
