#!/usr/bin/env bash
# cpattn's local attention kernel (forward + backward, one process) against
# PyTorch, on the same shapes and thread counts, in the same run:
#
#   torch1.13  Debian's python3-torch (1.13.1), run by /usr/bin/python3: plain
#              materialised attention, softmax((q @ k^T) * scale [masked_fill -inf]) @ v,
#              backward by autograd.  Installed with apt-get if missing.
#   SDPA       PyTorch 2.x torch.nn.functional.scaled_dot_product_attention (its CPU
#              flash attention where PyTorch picks it; the kernel it used is printed per
#              row), installed by this script from PyPI into a throwaway virtual
#              environment ($VENV).  Never a dependency of the build or the tests.
#
#   bench/torch_peers.sh                 # full grid (slow: S=16384 takes long)
#   QUICK=1 bench/torch_peers.sh         # S=1024,4096  D=64,128  MHA  1 thread
#
# Knobs (env):
#   SEQS="1024 4096 16384"   sequence lengths S
#   DIMS="64 128 192/128"    head dims: D (Dv = D) or Dqk/Dv (MLA-style)
#   THREADS="1 2"            thread counts (cpattn --threads, torch.set_num_threads,
#                            OMP_NUM_THREADS for every process)
#   MASKS="causal general"   attention masks
#   GQAS="8 2"               key/value heads G (HEADS % G == 0); HEADS=8, BATCH=1
#   ITERS=3 WARMUP=1         timed / untimed iterations per case (median, min, max)
#   QUICK=1                  defaults SEQS="1024 4096" DIMS="64 128" THREADS=1 GQAS=$HEADS
#   CSV=FILE                 also write the rows as CSV (default: none)
#   MEM_LIMIT_MIB=N          skip a PyTorch case whose predicted peak RSS exceeds N
#                            (default 70% of MemTotal; the materialised S x S scores
#                            are the big part, see QUADRATIC_TENSORS in torch_attention.py)
#   GQA_MODE=auto|expand|native   SDPA with G < H: auto = enable_gqa=True when the
#                            installed torch has it (>= 2.5) and it keeps the kernel
#                            picked for expanded k/v, else repeat_interleave (timed as
#                            part of the forward); torch1.13 always repeat_interleaves
#   TORCH1=0 / TORCH2=0      leave that peer out
#   VENV=DIR                 the virtual environment (default ${TMPDIR:-/tmp}/cpattn-torch2-venv,
#                            reused when torch >= 2 imports there); TORCH2_SPEC=torch
#                            (pip requirement, e.g. "torch==2.5.1"); VENV_PYTHON=/usr/bin/python3
#   BIN=build/cpattn         cpattn binary (built with cmake when the default is missing)
#   CASE_TIMEOUT=3600        seconds per (implementation, case) process
#
# Each (implementation, case) runs in its own process, so each peak RSS is that
# case's (PyTorch's includes the ~0.2-0.5 GiB of libraries present after import,
# printed in the header).  Flops are cpattn's for every implementation:
# forward 2*B*H*(Dqk+Dv)*pairs, pairs = S^2 (general) or S(S+1)/2 (causal),
# backward 2.5x forward; GF/s = 3.5*forward flops / (fwd + bwd time), and the
# ratios cpattn/peer of that (= peer time / cpattn time; > 1: cpattn faster).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
PY=$here/torch_attention.py

say() { echo "torch_peers: $*" >&2; }
die() {
  echo "torch_peers: error: $*" >&2
  exit 1
}
usage() {
  echo "torch_peers: bad setting: $*" >&2
  exit 2
}

QUICK=${QUICK:-0}
HEADS=${HEADS:-8}
if [ "$QUICK" = 1 ]; then
  d_seqs="1024 4096" d_dims="64 128" d_threads=1 d_gqas=$HEADS
else
  d_seqs="1024 4096 16384" d_dims="64 128 192/128" d_threads="1 2" d_gqas="$HEADS 2"
fi
SEQS=${SEQS:-$d_seqs}
DIMS=${DIMS:-$d_dims}
THREADS=${THREADS:-$d_threads}
GQAS=${GQAS:-$d_gqas}
MASKS=${MASKS:-causal general}
BATCH=${BATCH:-1}
ITERS=${ITERS:-3}
WARMUP=${WARMUP:-1}
GQA_MODE=${GQA_MODE:-auto}
TORCH1=${TORCH1:-1}
TORCH2=${TORCH2:-1}
VENV=${VENV:-${TMPDIR:-/tmp}/cpattn-torch2-venv}
VENV_PYTHON=${VENV_PYTHON:-/usr/bin/python3}
TORCH2_SPEC=${TORCH2_SPEC:-torch}
CASE_TIMEOUT=${CASE_TIMEOUT:-3600}
CSV=${CSV:-}
BIN=${BIN:-$root/build/cpattn}
mem_total_mib=$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1024 }' /proc/meminfo)
MEM_LIMIT_MIB=${MEM_LIMIT_MIB:-$((mem_total_mib * 70 / 100))}

# ---- validate the knobs ------------------------------------------------------
is_uint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
for v in $SEQS; do is_uint "$v" || usage "SEQS: '$v' is not a positive integer"; done
for v in $THREADS; do is_uint "$v" || usage "THREADS: '$v' is not a positive integer"; done
for v in $GQAS; do
  is_uint "$v" || usage "GQAS: '$v' is not a positive integer"
  ((HEADS % v == 0)) || usage "GQAS: HEADS=$HEADS is not a multiple of G=$v"
done
for v in $DIMS; do
  [[ $v =~ ^[1-9][0-9]*(/[1-9][0-9]*)?$ ]] || usage "DIMS: '$v' is not D or Dqk/Dv"
done
for v in $MASKS; do
  [[ $v = causal || $v = general ]] || usage "MASKS: '$v' is not causal or general"
done
for n in HEADS BATCH ITERS CASE_TIMEOUT MEM_LIMIT_MIB; do
  is_uint "${!n}" || usage "$n: '${!n}' is not a positive integer"
done
[[ $WARMUP =~ ^[0-9]+$ ]] || usage "WARMUP: '$WARMUP' is not a non-negative integer"
[[ $GQA_MODE =~ ^(auto|expand|native)$ ]] || usage "GQA_MODE: '$GQA_MODE' is not auto, expand or native"
[[ $TORCH1 =~ ^[01]$ && $TORCH2 =~ ^[01]$ ]] || usage "TORCH1 and TORCH2 are 0 or 1"
[ -f "$PY" ] || die "$PY is missing"

# ---- set-up: cpattn, Debian's torch, the PyTorch 2.x venv -----------------------
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "installing Debian packages needs root or sudo: $*"
  fi
}

# Install the Debian packages named that are missing (as scripts/install-deps.sh does).
need_debs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "installing missing Debian packages: ${missing[*]}"
  as_root apt-get update -qq || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

if [ ! -x "$BIN" ]; then
  [ "$BIN" = "$root/build/cpattn" ] || die "BIN=$BIN is not an executable file"
  say "building cpattn ($BIN is missing)"
  (cd "$root" && scripts/install-deps.sh && cmake -S . -B build >/dev/null &&
    cmake --build build -j2 >/dev/null) || die "building cpattn failed (cmake -S . -B build && cmake --build build)"
fi
"$BIN" attn --help >/dev/null 2>&1 || die "$BIN attn --help failed: is it a cpattn binary?"

# Python of each peer: environment cleared of PYTHONPATH and of the user site, so that
# each imports the torch it is meant to.
py1() { env -u PYTHONPATH -u PYTHONHOME /usr/bin/python3 -s "$PY" "$@"; }
py2() { env -u PYTHONPATH -u PYTHONHOME "$VENV/bin/python" -s "$PY" "$@"; }

t1_desc="" t2_desc="" t2_source=""
if [ "$TORCH1" = 1 ]; then
  need_debs python3 python3-torch
  info1=$(py1 --info 2>&1) || die "Debian's torch does not import: $(tail -n 3 <<<"$info1")"
  t1_ver=$(awk '$1 == "torch" { print $2 }' <<<"$info1")
  t1_desc="Debian python3-torch $(dpkg-query -W -f='${Version}' python3-torch) (torch.__version__ $t1_ver;"
  t1_desc+=" cpu $(awk '$1 == "cpu_capability" { print $2 }' <<<"$info1"),"
  t1_desc+=" BLAS libblas.so.3 -> $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo '?'),"
  t1_desc+=" $(awk '$1 == "rss_after_import" { print $2 }' <<<"$info1") MiB after import)"
fi

torch2_ok() {
  [ -x "$VENV/bin/python" ] &&
    env -u PYTHONPATH -u PYTHONHOME "$VENV/bin/python" -s -c \
      'import sys, numpy, torch; sys.exit(int(torch.__version__.split(".")[0]) < 2)' >/dev/null 2>&1
}

# The venv's pip only: never --user, never outside a virtual environment.
vpip() {
  env -u PYTHONPATH -u PYTHONHOME PIP_USER=0 PIP_REQUIRE_VIRTUALENV=1 \
    "$VENV/bin/python" -m pip install --disable-pip-version-check "$@"
}

if [ "$TORCH2" = 1 ]; then
  if torch2_ok; then
    t2_source=$(cat "$VENV/.cpattn-torch-source" 2>/dev/null || echo "an existing venv")
  else
    if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
      die "VENV=$VENV exists and is not a virtual environment; remove it or set VENV to another folder"
    fi
    [ -x "$VENV_PYTHON" ] || VENV_PYTHON=$(command -v python3) || die "no python3 to create the venv"
    need_debs python3-venv
    log=$VENV.pip.log
    say "creating $VENV and installing $TORCH2_SPEC (log: $log); the PyPI wheel is large, this takes minutes"
    "$VENV_PYTHON" -m venv --clear "$VENV" >"$log" 2>&1 ||
      die "'$VENV_PYTHON -m venv $VENV' failed: $(tail -n 3 "$log")"
    # The CPU-only wheels first; where that index cannot be reached, PyPI's default
    # wheel (built with CUDA, its CUDA libraries unused here: it runs on the CPU).
    if vpip --retries 1 --timeout 20 -q --index-url https://download.pytorch.org/whl/cpu \
      "$TORCH2_SPEC" >>"$log" 2>&1; then
      t2_source="the CPU wheel index (download.pytorch.org/whl/cpu)"
    else
      say "the CPU wheel index failed ($(grep -m1 '^ERROR' "$log" | cut -c1-120)); installing from PyPI"
      vpip -q "$TORCH2_SPEC" >>"$log" 2>&1 || die "pip install $TORCH2_SPEC from PyPI failed: $(tail -n 5 "$log")"
      t2_source="PyPI (default wheel)"
    fi
    vpip -q numpy >>"$log" 2>&1 || die "pip install numpy failed: $(tail -n 5 "$log")"
    echo "$t2_source" >"$VENV/.cpattn-torch-source"
    torch2_ok || die "torch >= 2 does not import from $VENV after installing (see $log)"
  fi
  info2=$(py2 --info 2>&1) || die "the venv's torch does not import: $(tail -n 3 <<<"$info2")"
  t2_ver=$(awk '$1 == "torch" { print $2 }' <<<"$info2")
  t2_gqa=$(awk '$1 == "enable_gqa" { print $2 }' <<<"$info2")
  t2_desc="torch $t2_ver from $t2_source in $VENV (cpu $(awk '$1 == "cpu_capability" { print $2 }' <<<"$info2"),"
  t2_desc+=" BLAS $(awk '$1 == "blas" { print $2 }' <<<"$info2"),"
  t2_desc+=" $(awk '$1 == "rss_after_import" { print $2 }' <<<"$info2") MiB after import; SDPA enable_gqa: $t2_gqa)"
fi

# ---- running one case ----------------------------------------------------------
# run_impl IMPL: runs the current case ($T $M $S $G $D $DV) for cpattn|torch1|torch2 in
# its own process and sets r_status (ok|skipped|failed), r_fwd r_bwd (median ms),
# r_mem (peak RSS MiB), r_base (RSS after import), r_kernel, r_gqa, r_why.
run_impl() {
  local impl=$1 out rc=0
  local -a cmd
  case $impl in
  cpattn)
    cmd=("$BIN" attn --micro-batch-size "$BATCH" --seq-length "$S" --num-attention-heads "$HEADS"
      --num-query-groups "$G" --kv-channels "$D" --v-channels "$DV" --attention-mask-type "$M"
      --threads "$T" --iters "$ITERS" --warmup "$WARMUP")
    ;;
  torch1 | torch2)
    local args=(--batch "$BATCH" --seq "$S" --heads "$HEADS" --groups "$G" --dqk "$D" --dv "$DV"
      --mask "$M" --threads "$T" --iters "$ITERS" --warmup "$WARMUP" --mem-limit-mib "$MEM_LIMIT_MIB")
    if [ "$impl" = torch1 ]; then
      cmd=(env -u PYTHONPATH -u PYTHONHOME /usr/bin/python3 -s "$PY" --impl materialised "${args[@]}")
    else
      cmd=(env -u PYTHONPATH -u PYTHONHOME "$VENV/bin/python" -s "$PY" --impl sdpa --gqa "$GQA_MODE" "${args[@]}")
    fi
    ;;
  esac
  out=$(OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T OPENBLAS_NUM_THREADS=$T \
    timeout "$CASE_TIMEOUT" "${cmd[@]}" 2>&1) || rc=$?
  r_why=""
  # every field is "-" when its line is missing
  read -r r_fwd r_bwd r_mem r_base r_kernel r_gqa <<<"$(awk '
    BEGIN { f = b = m = base = k = g = "-" }
    /^forward  median/ { f = $3 }
    /^backward median/ { b = $3 }
    /^peak RSS/ { m = $3 }
    /^base RSS/ { base = $3 }
    /^# impl/ { for (i = 1; i < NF; i++) { if ($i == "kernel") k = $(i + 1); if ($i == "gqa") g = $(i + 1) } }
    END { print f, b, m, base, k, g }' <<<"$out")"
  if [ "$rc" -eq 0 ] && [ "$r_fwd" != - ] && [ "$r_bwd" != - ] && [ "$r_mem" != - ]; then
    r_status=ok
    return
  fi
  if [ "$rc" -eq 3 ] && grep -q '^skipped:' <<<"$out"; then
    r_status=skipped
    r_why=$(grep -m1 '^skipped:' <<<"$out" | sed 's/^skipped: //')
    return
  fi
  r_status=failed
  case $rc in
  0) r_why="no timing lines in the output: $(tail -n 1 <<<"$out")" ;;
  124) r_why="timed out after CASE_TIMEOUT=$CASE_TIMEOUT s" ;;
  137) r_why="killed by SIGKILL (out of memory?)" ;;
  *)
    local err
    err=$(awk '!/^#/ && /rror|cpattn attn:|Killed/ { print; exit }' <<<"$out")
    [ -n "$err" ] || err=$(tail -n 1 <<<"$out")
    r_why="exit $rc: $err"
    ;;
  esac
}

gflops() { # fwd_ms bwd_ms -> fwd+bwd GFLOP/s of the current case
  awk -v f="$1" -v b="$2" -v B="$BATCH" -v H="$HEADS" -v D="$D" -v DV="$DV" -v S="$S" -v M="$M" 'BEGIN {
    pairs = (M == "causal") ? S * (S + 1) / 2 : S * S
    printf "%.1f", 3.5 * 2 * B * H * (D + DV) * pairs / ((f + b) * 1e-3) / 1e9 }'
}

# ---- header ----------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//' || echo '?')
rev=$(git -C "$root" describe --always --dirty 2>/dev/null || echo '?')
echo "# cpattn vs PyTorch: local attention, fp32, forward and backward, B=$BATCH, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "# machine: $cpu; $(nproc) CPUs; MemTotal $mem_total_mib MiB"
echo "# cpattn: $BIN (git $rev), 'cpattn attn', bshd, --threads T"
if [ "$TORCH1" = 1 ]; then
  echo "# torch1.13: $t1_desc"
  echo "#   materialised: softmax((q @ k^T) * scale, masked_fill(-inf) when causal) @ v, [B,H,S,D]; backward: out.backward(dout)"
else
  echo "# torch1.13: left out (TORCH1=0)"
fi
if [ "$TORCH2" = 1 ]; then
  echo "# SDPA: $t2_desc"
  echo "#   F.scaled_dot_product_attention(q, k, v, is_causal=...), PyTorch's own kernel choice (column 'sdpa kernel':"
  echo "#   flash = its CPU flash attention, math = its materialised fallback); q/k/v require grad; backward: out.backward(dout)"
else
  echo "# SDPA: left out (TORCH2=0)"
fi
echo "# GQA (G < H): torch1.13 repeat_interleave of k/v inside the timed forward; SDPA GQA_MODE=$GQA_MODE (column 'gqa')"
echo "# threads: --threads T / torch.set_num_threads(T), OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=T"
echo "# timing: $WARMUP warm-up + $ITERS timed iterations per case, medians in ms; each (implementation, case) in its own process"
echo "# GF/s = 3.5 * 2*B*H*(Dqk+Dv)*visible pairs / (fwd + bwd); c/t1, c/sdpa = cpattn GF/s / peer GF/s (> 1: cpattn faster)"
echo "# MiB = peak RSS of that process; PyTorch cases predicted above MEM_LIMIT_MIB=$MEM_LIMIT_MIB (default 70% of MemTotal) are skipped"

row() {
  printf "%2s %-7s %6s %2s %2s %4s %4s | %9s %9s %6s %6s | %9s %9s %6s %6s | %9s %9s %6s %6s | %6s %6s | %s\n" "$@"
}
row "" "" "" "" "" "" "" "cpattn" "" "" "" "torch1.13" "" "" "" "torch2-SDPA" "" "" "" "" "" ""
row T mask S H G Dqk Dv fwd_ms bwd_ms GF/s MiB fwd_ms bwd_ms GF/s MiB fwd_ms bwd_ms GF/s MiB \
  c/t1 c/sdpa "sdpa kernel, gqa"

if [ -n "$CSV" ]; then
  echo "threads,mask,B,S,H,G,Dqk,Dv,cpattn_status,cpattn_fwd_ms,cpattn_bwd_ms,cpattn_gflops,cpattn_peak_rss_mib,torch113_status,torch113_fwd_ms,torch113_bwd_ms,torch113_gflops,torch113_peak_rss_mib,torch113_base_rss_mib,sdpa_status,sdpa_fwd_ms,sdpa_bwd_ms,sdpa_gflops,sdpa_peak_rss_mib,sdpa_base_rss_mib,sdpa_kernel,sdpa_gqa,cpattn_over_torch113,cpattn_over_sdpa,torch113_version,sdpa_version,notes" >"$CSV" ||
    die "cannot write CSV=$CSV"
fi

# ---- the grid ---------------------------------------------------------------------
n_fail=0
for T in $THREADS; do
  for M in $MASKS; do
    for S in $SEQS; do
      for G in $GQAS; do
        for dims in $DIMS; do
          D=${dims%/*} DV=${dims#*/}
          declare -A st=() fw=() bw=() gf=() mem=() base=() why=()
          kern="-" gqa="-"
          for impl in cpattn torch1 torch2; do
            if { [ "$impl" = torch1 ] && [ "$TORCH1" = 0 ]; } || { [ "$impl" = torch2 ] && [ "$TORCH2" = 0 ]; }; then
              st[$impl]=off fw[$impl]=- bw[$impl]=- gf[$impl]=- mem[$impl]=- base[$impl]=-
              continue
            fi
            run_impl "$impl"
            st[$impl]=$r_status why[$impl]=$r_why base[$impl]=$r_base
            if [ "$r_status" = ok ]; then
              fw[$impl]=$r_fwd bw[$impl]=$r_bwd mem[$impl]=$r_mem gf[$impl]=$(gflops "$r_fwd" "$r_bwd")
            else
              fw[$impl]=$r_status bw[$impl]=- gf[$impl]=- mem[$impl]=-
              [ "$r_status" = failed ] && n_fail=$((n_fail + 1))
            fi
            [ "$impl" = torch2 ] && [ "$r_status" = ok ] && kern=$r_kernel gqa=$r_gqa
          done
          ratio() { # peer -> cpattn GF/s / peer GF/s
            if [ "${st[cpattn]}" = ok ] && [ "${st[$1]}" = ok ]; then
              awk -v a="${gf[cpattn]}" -v b="${gf[$1]}" 'BEGIN { printf "%.2f", a / b }'
            else
              echo -
            fi
          }
          r1=$(ratio torch1) r2=$(ratio torch2)
          row "$T" "$M" "$S" "$HEADS" "$G" "$D" "$DV" \
            "${fw[cpattn]}" "${bw[cpattn]}" "${gf[cpattn]}" "${mem[cpattn]}" \
            "${fw[torch1]}" "${bw[torch1]}" "${gf[torch1]}" "${mem[torch1]}" \
            "${fw[torch2]}" "${bw[torch2]}" "${gf[torch2]}" "${mem[torch2]}" \
            "$r1" "$r2" "$kern, $gqa"
          notes=""
          for impl in cpattn torch1 torch2; do
            if [ -n "${why[$impl]:-}" ]; then
              name=${impl/torch1/torch1.13}
              name=${name/torch2/torch2-SDPA}
              echo "#   $name ${st[$impl]} (T=$T $M S=$S G=$G D=$dims): ${why[$impl]}"
              notes+="$name ${st[$impl]}: ${why[$impl]}; "
            fi
          done
          if [ -n "$CSV" ]; then
            v() { [ "${st[$1]}" = ok ] && echo "$2" || echo ""; }
            printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"%s"\n' \
              "$T" "$M" "$BATCH" "$S" "$HEADS" "$G" "$D" "$DV" \
              "${st[cpattn]}" "$(v cpattn "${fw[cpattn]}")" "$(v cpattn "${bw[cpattn]}")" "$(v cpattn "${gf[cpattn]}")" "$(v cpattn "${mem[cpattn]}")" \
              "${st[torch1]}" "$(v torch1 "${fw[torch1]}")" "$(v torch1 "${bw[torch1]}")" "$(v torch1 "${gf[torch1]}")" "$(v torch1 "${mem[torch1]}")" "$(v torch1 "${base[torch1]}")" \
              "${st[torch2]}" "$(v torch2 "${fw[torch2]}")" "$(v torch2 "${bw[torch2]}")" "$(v torch2 "${gf[torch2]}")" "$(v torch2 "${mem[torch2]}")" "$(v torch2 "${base[torch2]}")" \
              "$kern" "$gqa" "${r1/-/}" "${r2/-/}" "${t1_ver:-}" "${t2_ver:-}" "${notes//\"/\'}" >>"$CSV"
          fi
          unset st fw bw gf mem base why
        done
      done
    done
  done
done
[ -n "$CSV" ] && echo "# CSV: $CSV"
if ((n_fail)); then
  echo "# $n_fail (implementation, case) runs failed (see the '#' lines under their rows)"
  exit 1
fi
