#!/usr/bin/env bash
# Hybrid (USP) sequence parallelism (MindSpeed: tests_extend/.../hybrid.sh):
# Ulysses inside groups of --ulysses-degree-in-cp U consecutive ranks, ring
# attention across the CP/U groups.
source "$(dirname "$0")/common.sh"
CP=${CP:-4}
U=${U:-2}
"${MPIEXEC[@]}" -n "$CP" "$CPATTN" train "${GPT_ARGS[@]}" \
  --context-parallel-size "$CP" --context-parallel-algo hybrid_cp_algo \
  --ulysses-degree-in-cp "$U" --use-cp-send-recv-overlap "$@"
