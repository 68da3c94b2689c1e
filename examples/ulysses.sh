#!/usr/bin/env bash
# Ulysses sequence parallelism (MindSpeed: tests_extend/.../ulysses.sh):
# all-to-all from sequence-sharded to head-sharded, local attention, and back.
# Rule: --num-attention-heads divisible by TP x CP.
source "$(dirname "$0")/common.sh"
CP=${CP:-2}
"${MPIEXEC[@]}" -n "$CP" "$CPATTN" train "${GPT_ARGS[@]}" \
  --context-parallel-size "$CP" --context-parallel-algo ulysses_cp_algo "$@"
