#!/usr/bin/env bash
# ssmtune's training step against the peer's (transformers + peft on torch, mambapy's scan:
# data_scripts/bench_reference.py) on the same work, side by side: each case runs both, one
# after the other, in every round, so a slow spell of the machine hits both. The table gives
# each side's tokens/s per round and median, the ratio of the medians, ssmtune's step time over
# its floor (ssmtune bench's "floor" line: the step's GEMM FLOPs at this machine's sgemm rate plus
# its scan bytes at its memory bandwidth) and each side's peak resident memory (median).
#
#   bash configs/bench/vs_transformers.sh                   # the default cases, 3 rounds
#   ROUNDS=5 CASES="mamba-d256:8:256:lora-r8" bash configs/bench/vs_transformers.sh
#
# A case is model:batch:seq_len:peft, with configs/bench/<model>.json and <peft>.json; or
# model:1:prompt_len:genN, greedy generation of N tokens after a prompt of prompt_len (both
# sides' --generate; tokens/s is N over a whole run's time, and the floor column is a decode
# step over reading every weight once at the machine's bandwidth). A fifth field, bf16, holds
# ssmtune's frozen weights in bf16 (`--frozen-weights bf16`, the values rounded once); the peer
# computes in fp32 on fp32 weights either way, as transformers does by default.
# Environment: SSMTUNE (the binary), PYTHON (one with data_scripts/requirements-bench.txt),
# ROUNDS, CASES, STEPS (measured steps per run; each run reports their median), THREADS (both
# sides; default: every core), OUT (where the raw outputs go).
set -euo pipefail
ssmtune=${SSMTUNE:-build/apps/ssmtune/ssmtune}
python=${PYTHON:-python3}
rounds=${ROUNDS:-3}
steps=${STEPS:-3}
threads=${THREADS:-$(nproc)}
cases=${CASES:-"mamba-d256:8:256:lora-r8 mamba-d256:8:256:full mamba-d256:4:2048:lora-r8
                mamba-130m:1:512:lora-r8 mamba-130m:1:16:gen128"}
out=${OUT:-$(mktemp -d)}
dir=$(dirname "$0")
reference="$dir/../../data_scripts/bench_reference.py"

for round in $(seq 1 "$rounds"); do
  for c in $cases; do
    IFS=: read -r model batch len peft held <<< "$c"
    args=(--config "$dir/$model.json" --batch "$batch" --seq-len "$len" --steps "$steps"
          --warmup 1)
    case "$peft" in
      gen*) args+=(--generate "${peft#gen}") ;;  # generation: len is the prompt
      *) args+=(--peft "$dir/$peft.json") ;;
    esac
    ours_args=("${args[@]}")
    [ -z "$held" ] || ours_args+=(--frozen-weights "$held")
    OMP_NUM_THREADS=$threads "$ssmtune" bench "${ours_args[@]}" > "$out/$c-ssmtune-r$round.txt"
    "$python" "$reference" "${args[@]}" --threads "$threads" \
      > "$out/$c-peer-r$round.json" 2> "$out/$c-peer-r$round.log"
    echo "round $round  $c  ssmtune $(grep -m1 '^tokens/s' "$out/$c-ssmtune-r$round.txt")" \
         " peer $(grep -o '"tokens_per_s": [0-9.]*' "$out/$c-peer-r$round.json")" >&2
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
runs() { paste -sd, | sed 's/,/, /g'; }
ours() { grep -h "$2" "$out/$1"-ssmtune-r*.txt | awk -v f="$3" '{ print $f }'; }
peer() { grep -ho "\"$2\": [0-9.]*" "$out/$1"-peer-r*.json | awk '{ printf "%.1f\n", $2 }'; }
echo "| case (model, batch x length, method) | ssmtune tokens/s (runs) | median |" \
     "peer tokens/s (runs) | median | ssmtune / peer | ssmtune step / floor |" \
     "peak resident MiB ssmtune / peer | memory ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
for c in $cases; do
  IFS=: read -r model batch len peft held <<< "$c"
  ours_med=$(ours "$c" '^tokens/s' 2 | median)
  peer_med=$(peer "$c" tokens_per_s | median)
  floor=$(grep -h '^floor' "$out/$c"-ssmtune-r*.txt | awk '{ print $NF }' | median)
  mem_ours=$(ours "$c" '^memory' 4 | median)
  mem_peer=$(peer "$c" peak_resident_mib | median)
  echo "| $model, $batch x $len, $peft${held:+, $held} |" \
       "$(ours "$c" '^tokens/s' 2 | runs) | $ours_med |" \
       "$(peer "$c" tokens_per_s | runs) | $peer_med |" \
       "$(awk -v a="$ours_med" -v b="$peer_med" 'BEGIN { printf "%.2f", a / b }') | $floor |" \
       "$mem_ours / $mem_peer |" \
       "$(awk -v a="$mem_ours" -v b="$mem_peer" 'BEGIN { printf "%.2f", a / b }') |"
done
echo "raw outputs: $out" >&2
