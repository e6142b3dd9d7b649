#!/usr/bin/env bash
# A sweep over PEFT methods, LoRA ranks and learning rates with `ssmtune train --set`, as P1
# grid-searches the learning rate per method (docs/methods.md section 9). Each run writes its own
# output directory; finished runs are skipped and interrupted ones resumed, so the sweep can simply
# be started again after a crash. At the end, one table of final metrics: <out>/results.tsv.
#
#   bash configs/sweep.sh                                  # the quickstart task, default grid
#   METHODS="lora-in-out full" RANKS="8" LRS="1e-3 3e-3" bash configs/sweep.sh base.json runs/s1
#
# Environment: SSMTUNE (the binary), METHODS, RANKS, LRS, EXTRA (more --set arguments for
# every run, e.g. EXTRA="--set training.steps=50").
set -euo pipefail
base=${1:-configs/quickstart.json}
out=${2:-runs/sweep}
ssmtune=${SSMTUNE:-build/apps/ssmtune/ssmtune}
methods=${METHODS:-"lora-in-out lora-all lora-slices"}
ranks=${RANKS:-"4 8"}
lrs=${LRS:-"1e-3 3e-3"}
extra=${EXTRA:-}

# A method name -> its "peft" section.
peft_for() {
  case "$1" in
    lora-in-out) echo '{"lora": {"targets": ["in_proj", "out_proj"]}}' ;;
    lora-out)    echo '{"lora": {"targets": ["out_proj"]}}' ;;
    lora-all)    echo '{"lora": {"targets": ["in_proj", "x_proj", "dt_proj", "out_proj"]}}' ;;
    lora-slices) echo '{"lora": {"targets": ["in_proj.x", "x_proj.B", "x_proj.C", "out_proj"]}}' ;;
    full)        echo '{"full": true}' ;;
    *) echo "unknown method $1 (lora-in-out, lora-out, lora-all, lora-slices, full)" >&2; exit 2 ;;
  esac
}

# The value of a number field of summary.json (flat keys and the "eval" object's keys).
field() { grep -o "\"$2\": [-0-9.eE+]*" "$1" | head -1 | awk '{print $2}'; }
# The same, rounded to 4 decimals (empty stays empty: a metric the run did not compute).
num() { field "$1" "$2" | awk '{printf "%.4f", $1}'; }

mkdir -p "$out"
for method in $methods; do
  for rank in $ranks; do
    # Full fine-tuning has no rank: run it once.
    [ "$method" = full ] && [ "$rank" != "${ranks%% *}" ] && continue
    for lr in $lrs; do
      name="$method-r$rank-lr$lr"
      [ "$method" = full ] && name="$method-lr$lr"
      dir="$out/$name"
      if [ -f "$dir/summary.json" ]; then echo "done already: $name"; continue; fi
      sets=(--set "peft=$(peft_for "$method")" --set "optimizer.lr=$lr")
      [ "$method" = full ] || sets+=(--set "peft.lora.rank=$rank" --set "peft.lora.alpha=$rank")
      echo "== $name"
      # shellcheck disable=SC2086  # $extra is a list of words on purpose
      "$ssmtune" --quiet train "$base" "${sets[@]}" $extra --out "$dir" --resume
    done
  done
done

# One row per finished run.
{
  printf 'run\tsteps\ttrain_loss\teval_loss\teval_accuracy\ttokens_per_s\ttrainable\n'
  for s in "$out"/*/summary.json; do
    [ -f "$s" ] || continue
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(basename "$(dirname "$s")")" \
      "$(field "$s" steps)" "$(num "$s" last_loss)" "$(num "$s" loss)" \
      "$(num "$s" accuracy)" "$(field "$s" tokens_per_s | cut -d. -f1)" \
      "$(field "$s" trainable_parameters)"
  done
} > "$out/results.tsv"
column -t -s $'\t' "$out/results.tsv"
