#!/usr/bin/env bash
# Several training runs of one recipe side by side, one per GPU, and long evaluations of their exports: how the
# multi-seed comparisons of docs/training.md were run (one H200 per run).
#
#   scripts/seed_runs.sh train CONFIG NAME:GPU:SEED:DATA_SEED ... [-- --config.FLAG=VALUE ...]
#       trains outputs/NAME with --config.seed / --config.data_seed, on GPU number GPU (CUDA_VISIBLE_DEVICES), all
#       runs at once; then prints the runs side by side (scripts/training_runs.py). With SESSION_SECONDS=S each run
#       stops after S training seconds with a checkpoint: run the same command again to go on (time-limited jobs).
#   scripts/seed_runs.sh eval CONFIG GPU:NAME:SEED[:SEED...] ... [-- --config.FLAG=VALUE ...]
#       evaluates outputs/NAME/model on GPU number GPU at LENGTHS (default 16M tokens), one invocation per
#       evaluation seed (KEYS keys per depth and haystack, default 3: 66 prompts), into outputs/NAME_e<SEED>;
#       queues for different GPUs run at once. Pool them with
#       scripts/training_runs.py NAME=outputs/NAME,outputs/NAME_e1234,...
#
# Environment: OUTPUTS (default outputs), SESSION_SECONDS (train; default 0: the whole budget), LENGTHS (eval; default
# "(16777216,)"), KEYS (eval; default 3, one generate call of 2 x KEYS prompts per depth: at 16M 2.3 s per prompt on
# an H200 against 3.7 with 1), PYTHON (default python3), TIMEOUT (seconds per invocation; default none). Logs:
# OUTPUTS/NAME*.log. The first key of a cell does not depend on KEYS, so KEYS=1 results resume into a KEYS=3 run.
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."

usage() { sed -n '2,18p' "$self" >&2; exit 2; }
[ $# -ge 3 ] || usage
mode=$1 config=$2; shift 2
specs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do specs+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the "--"
extra=("$@")
[ ${#specs[@]} -gt 0 ] || usage
outputs=${OUTPUTS:-outputs}
python=${PYTHON:-python3}
mkdir -p "$outputs"
limit=()
[ -n "${TIMEOUT:-}" ] && limit=(timeout "$TIMEOUT")
keys=${KEYS:-3}
case "$keys" in ''|*[!0-9]*|0) echo "KEYS=$keys: write a positive number of keys per depth and haystack." >&2; exit 2 ;; esac

# Every spec is checked before anything starts, so that a bad one leaves no run behind.
for spec in "${specs[@]}"; do
  case "$mode" in
    train)
      IFS=: read -r name gpu seed data_seed <<< "$spec"
      [ -n "$name" ] && [ -n "$gpu" ] && [ -n "$seed" ] && [ -n "$data_seed" ] || {
        echo "Bad run '$spec': write NAME:GPU:SEED:DATA_SEED (e.g. Q2:0:2:3)." >&2; exit 2; } ;;
    eval)
      IFS=: read -r gpu name seeds <<< "$spec"
      [ -n "$gpu" ] && [ -n "$name" ] && [ -n "$seeds" ] || {
        echo "Bad queue '$spec': write GPU:NAME:SEED[:SEED...] (e.g. 1:Q2:1234:1235)." >&2; exit 2; }
      [ -d "$outputs/$name/model" ] || {
        echo "$outputs/$name/model does not exist: train $name first." >&2; exit 2; } ;;
    *) usage ;;
  esac
done

pids=()
case "$mode" in
  train)
    names=()
    for spec in "${specs[@]}"; do
      IFS=: read -r name gpu seed data_seed <<< "$spec"
      names+=("$name=$outputs/$name")
      CUDA_VISIBLE_DEVICES=$gpu ${limit[@]+"${limit[@]}"} "$python" main.py --config="$config" \
        --config.workdir="$outputs/$name" --config.seed="$seed" --config.data_seed="$data_seed" \
        --config.session_seconds="${SESSION_SECONDS:-0}" ${extra[@]+"${extra[@]}"} > "$outputs/$name.log" 2>&1 &
      pids+=($!)
    done
    ;;
  eval)
    for spec in "${specs[@]}"; do
      IFS=: read -r gpu name seeds <<< "$spec"
      (
        failed=0
        for seed in ${seeds//:/ }; do
          CUDA_VISIBLE_DEVICES=$gpu ${limit[@]+"${limit[@]}"} "$python" main.py --config="$config" \
            --config.workdir="$outputs/${name}_e$seed" --config.eval_only=True \
            --config.init_from="$outputs/$name/model" --config.eval.context_lengths="${LENGTHS:-(16777216,)}" \
            --config.eval.num_samples="$keys" --config.eval.batch_size=$((2 * keys)) --config.eval.seed="$seed" \
            --config.probe.enabled=False ${extra[@]+"${extra[@]}"} > "$outputs/${name}_e$seed.log" 2>&1 || {
            echo "$name, evaluation seed $seed: failed (see $outputs/${name}_e$seed.log)" >&2; failed=1; }
        done
        exit $failed
      ) &
      pids+=($!)
    done
    ;;
esac

status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for log in "$outputs"/*.log; do
  echo "== $log"
  grep -E "Curriculum|leaves its first stage|Stopped after|Far-needle|probe|exact match|Misses" "$log" | tail -n 8 || true
done
if [ "$mode" = train ] && [ $status = 0 ]; then
  finished=()
  for run in "${names[@]}"; do [ -f "${run#*=}/eval/results.jsonl" ] && finished+=("$run"); done
  if [ ${#finished[@]} = ${#names[@]} ]; then
    "$python" scripts/training_runs.py "${finished[@]}" || status=1
  else
    echo "Not every run has finished (SESSION_SECONDS): run the same command again to go on."
  fi
fi
exit $status
