# Shared by the feature scripts: build cpattn if needed and set up mpiexec.
# Sourced, not run.  Mirrors MindSpeed's tests_extend feature scripts at a
# size that trains in a couple of minutes on 2 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -x "$ROOT/build/cpattn" ]; then
  "$ROOT/scripts/install-deps.sh"
  cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$ROOT/build" -j "$(nproc)" >/dev/null
fi
CPATTN="$ROOT/build/cpattn"
# Open MPI refuses root without these; one rank per core is the intent, but
# the 2-core machines need --oversubscribe for 4 ranks.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIEXEC=(mpiexec --oversubscribe)

# The model and the training, as in the Megatron scripts (GPT_ARGS).
GPT_ARGS=(
  --num-layers 2 --hidden-size 128 --num-attention-heads 8 --group-query-attention
  --num-query-groups 2 --seq-length 512 --micro-batch-size 4 --train-iters 300
  --lr 3e-3 --min-lr 1e-4 --lr-warmup-iters 30 --weight-decay 0.1 --clip-grad 1.0
  --vocab-size 16 --log-interval 25 --eval-interval 100 --eval-iters 4 --seed 1234
)
