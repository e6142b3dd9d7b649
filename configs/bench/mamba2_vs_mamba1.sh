#!/usr/bin/env bash
# Mamba-2 against Mamba-1 at matched parameter count (configs/bench/mamba-d256.json: 438k
# parameters per layer, mamba2-d256.json: 432k), training tokens/s at sequence lengths 512 to
# 8192 with the tokens per step fixed (8192: batch 16 x 512 ... 1 x 8192), so only the length
# changes. Both models run interleaved inside each round (one round: every length, both models),
# so a slow spell of the machine hits both; the table gives each cell's median over the rounds
# and the ratio of the medians. Every parameter gets a gradient (full fine-tuning's step).
#
#   bash configs/bench/mamba2_vs_mamba1.sh              # 3 rounds, lengths 512 1024 2048 4096 8192
#   ROUNDS=5 LENGTHS="512 8192" bash configs/bench/mamba2_vs_mamba1.sh
#
# Environment: SSMTUNE (the binary), ROUNDS, LENGTHS, TOKENS (per step), STEPS (measured steps per
# run; the run reports their median), OUT (where the raw bench outputs go).
set -euo pipefail
ssmtune=${SSMTUNE:-build/apps/ssmtune/ssmtune}
rounds=${ROUNDS:-3}
lengths=${LENGTHS:-"512 1024 2048 4096 8192"}
tokens=${TOKENS:-8192}
steps=${STEPS:-3}
out=${OUT:-$(mktemp -d)}
dir=$(dirname "$0")
models="mamba-d256 mamba2-d256"

for round in $(seq 1 "$rounds"); do
  for len in $lengths; do
    for model in $models; do
      log="$out/$model-L$len-r$round.txt"
      "$ssmtune" bench --config "$dir/$model.json" --batch $((tokens / len)) --seq-len "$len" \
        --steps "$steps" --warmup 1 > "$log"
      echo "round $round  L $len  $model  $(grep -m1 '^tokens/s' "$log")" >&2
    done
  done
done

# One row per length: each model's tokens/s per round, median, peak resident memory; the ratio.
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
field() { grep -h "$1" "$out"/$2 | awk -v f="$3" '{ print $f }'; }
echo "| L | batch | Mamba-1 tokens/s (runs) | median | Mamba-2 tokens/s (runs) | median |" \
     "Mamba-2 / Mamba-1 | peak resident MiB (1 / 2) |"
echo "|---|---|---|---|---|---|---|---|"
for len in $lengths; do
  row="| $len | $((tokens / len)) |"
  meds=()
  for model in $models; do
    runs=$(field '^tokens/s' "$model-L$len-r*.txt" 2 | paste -sd, | sed 's/,/, /g')
    med=$(field '^tokens/s' "$model-L$len-r*.txt" 2 | median)
    meds+=("$med")
    row="$row $runs | $med |"
  done
  ratio=$(awk -v a="${meds[0]}" -v b="${meds[1]}" 'BEGIN { printf "%.2f", b / a }')
  mem1=$(field '^memory' "mamba-d256-L$len-r*.txt" 4 | median)
  mem2=$(field '^memory' "mamba2-d256-L$len-r*.txt" 4 | median)
  echo "$row $ratio | $mem1 / $mem2 |"
done
echo "raw outputs: $out" >&2
