#!/usr/bin/env bash
# A short learning-rate search for every method config in configs/methods/ on the shipped example
# (P1's protocol, docs/methods.md section 9: a few learning rates per method, keep the best), then
# one markdown table of the best run per method: docs/results.md records its output.
#
#   bash configs/methods/lr_search.sh [OUT_DIR]      # LRS="1e-3 3e-3 1e-2" by default
#
# Finished runs are skipped, so the search can be started again after an interruption.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-runs/lr_search}
ssmtune=${SSMTUNE:-build/apps/ssmtune/ssmtune}
lrs=${LRS:-"1e-3 3e-3 1e-2"}

field() { grep -o "\"$2\": [-0-9.eE+]*" "$1" | head -1 | awk '{print $2}'; }

mkdir -p "$out"
for config in "$here"/*.json; do
  method=$(basename "$config" .json)
  for lr in $lrs; do
    dir="$out/$method-lr$lr"
    [ -f "$dir/summary.json" ] && continue
    echo "== $method lr $lr" >&2
    "$ssmtune" --quiet train "$config" --set "optimizer.lr=$lr" --out "$dir" --resume > /dev/null
  done
done

# The best learning rate per method by final eval accuracy (ties: lower eval loss).
echo "| method | trainable parameters | best lr | eval accuracy | eval loss | tokens/s |"
echo "|---|---|---|---|---|---|"
for config in "$here"/*.json; do
  method=$(basename "$config" .json)
  for lr in $lrs; do
    s="$out/$method-lr$lr/summary.json"
    printf '%s %s %s %s %s %s\n' "$method" "$(field "$s" trainable_parameters)" "$lr" \
      "$(field "$s" accuracy)" "$(field "$s" loss)" "$(field "$s" tokens_per_s)"
  done | sort -k4,4gr -k5,5g | head -1 |
    awk '{printf "| %s | %d | %s | %.3f | %.3f | %.0f |\n", $1, $2, $3, $4, $5, $6}'
done
