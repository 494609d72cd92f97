#!/usr/bin/env bash
# The one GPU check: the fast preset end to end, the experts' logits for routing work on a CPU, the tests of
# CUDA paths, routing with and without the teacher as fallback, the models compiled, the no-KD twins, then the
# training benchmark; every result written to files.
#
#   bash benchmarks/gpu_check.sh ARCHIVE [OUT] [BUDGET_S]            # one H100: the routing within 10 minutes, then the twins
#   bash benchmarks/gpu_check.sh --dry-run ARCHIVE [OUT] [BUDGET_S]  # the same steps at tiny size on a CPU, 8 minutes
#
# ARCHIVE is the CIFAR-10 .tar.gz (train/<class>/*, test/<class>/*). OUT (default results/gpu-check) gets
# progress.log, every stage's log, the runs' metrics and summaries, the evaluate reports and figures, the
# benchmark JSONs and OUT/logits (each expert's logits on route, val and test; the students' bf16 weights).
# With BUDGET_S (default: none), the steps after the chain run only while that many seconds have not passed
# and are stopped when they have, so that a time limit on the whole never costs the chain's results. Run it
# again with the same OUT to go on: finished stages and steps are skipped.
# Needs only the torch already installed: nothing is downloaded or pip-installed.
set -euo pipefail
cd "$(dirname "$0")/.."

preset=fast; bench=(); device=cuda
if [[ "${1:-}" == "--dry-run" ]]; then
    preset=smoke; bench=(--quick); device=cpu; shift
fi
archive="${1:?usage: benchmarks/gpu_check.sh [--dry-run] ARCHIVE [OUT] [BUDGET_S]}"
out="${2:-results/gpu-check}"
budget="${3:-0}"  # 0: no budget
[[ -f "$archive" ]] || { echo "error: archive '$archive' not found; pass the CIFAR-10 .tar.gz" >&2; exit 2; }
mkdir -p "$out/logs"
root="checkpoints/gpu-check-$preset"  # checkpoints stay out of OUT
export DISTILL_CACHE="data/cache" PYTHONUNBUFFERED=1

log() { echo "$(date -u +%H:%M:%S) [${SECONDS}s] $*" | tee -a "$out/progress.log"; }
collect() {  # the small files of every run into OUT/runs; checkpoints stay behind
    for run in "$root"/*/; do
        name=$(basename "$run")
        [[ "$name" == logit-cache ]] && continue
        mkdir -p "$out/runs/$name" && cp "$run"/*.json "$run"/*.csv "$run"/*.log "$out/runs/$name/" 2>/dev/null || true
    done
}
stage() {  # stage NAME COMMAND...: run, log its output, time it
    local name=$1; shift
    log "start $name: $*"
    local start=$SECONDS
    "$@" > "$out/logs/$name.log" 2>&1 || { local code=$?; log "FAILED $name (exit $code), see $out/logs/$name.log"
                                            collect; return 1; }
    log "done $name in $((SECONDS - start)) s"
    touch "$out/logs/$name.done"
    collect
}
optional() {  # optional NEED_S NAME COMMAND...: a stage that runs only if NEED_S seconds of the budget remain,
    local need=$1 name=$2; shift 2  # and is stopped when the budget runs out; done in an earlier call, skipped
    if [[ -f "$out/logs/$name.done" ]]; then log "skip $name: done in an earlier call"; return; fi
    if (( budget == 0 )); then stage "$name" "$@" || true; return; fi
    local left=$(( budget > SECONDS ? budget - SECONDS : 0 ))
    if (( need > left )); then log "skipped $name: it needs about $need s, $left s of the budget are left"; return; fi
    stage "$name" timeout $((budget - SECONDS)) "$@" || true
}

log "gpu_check $preset on $(python -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")'), torch $(python -c 'import torch; print(torch.__version__)')"
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() or sys.argv[1] == "cpu" else 1)' "$device" \
    || { log "no CUDA device visible; use --dry-run on a CPU"; exit 2; }
students=(); for arch in $(python -c 'from models import STUDENTS; print(*STUDENTS)'); do students+=("$root/$arch"); done
# The tests of CUDA paths, named as they run so that a stopped step says where: first the units (CUDA graphs
# against eager, the routing stream's waits, reads on the GPU), then evaluate.py and infer.py on the GPU
# against the CPU, which train tiny runs first.
scripts=(tests/test_evaluate.py tests/test_infer.py)
cuda_tests() {  # cuda_tests units|scripts
    python -c 'import pytest' 2>/dev/null || return 0
    if [[ $1 == units ]]; then optional 60 cuda-units python -m pytest -v -m cuda --durations=0 "${scripts[@]/#/--ignore=}" tests
    else optional 180 cuda-scripts python -m pytest -v -m cuda --durations=0 "${scripts[@]}"; fi
}
# The experts and their routing first; the no-KD twins, which only compare, once the routing is measured.
if ! stage pipeline python pipeline.py --preset "$preset" --no-baselines --data-dir "$archive" --root "$root" \
    --results "$out" --device "$device"; then  # what was trained still goes on on a CPU; the tests say what broke
    trained=(); for s in "${students[@]}"; do [[ -f "$s/summary.json" ]] && trained+=("$s"); done
    (( ${#trained[@]} )) && optional 30 export-logits python benchmarks/export_logits.py --experts "${trained[@]}" \
        --out "$out/logits" --device "$device"
    cuda_tests units; cuda_tests scripts
    exit 1
fi
log "chain without the twins: $SECONDS s wall"
optional 30 export-logits python benchmarks/export_logits.py --selector "$root/selector" --out "$out/logits" \
    --device "$device"
# The teacher as the costly last resort: behind the cheapest student alone, and (last) behind both.
fallback() {  # fallback NAME EXPERTS...: a selector with the teacher as last expert, and its report
    local name=$1; shift
    if [[ ! -f "$root/selector-$name/summary.json" ]]; then  # a second call skips it, as the chain's stages
        optional 40 "selector-$name" python selectorTrain.py --experts "$@" --include-teacher \
            --out "$root/selector-$name" --device "$device" --overwrite
    fi
    [[ -f "$root/selector-$name/summary.json" ]] || return 0
    optional 30 "evaluate-$name" python evaluate.py --selector "$root/selector-$name" --name "$preset-$name" \
        --results-dir "$out" --device "$device"
}
bench_routed() {  # bench_routed NAME: routed inference of a fallback selector in benchmarks/run.py
    [[ -f "$root/selector-$1/summary.json" ]] || return 0
    optional 50 "bench-routed-$1" python benchmarks/run.py "${bench[@]}" --parts routed \
        --selector "$root/selector-$1" --device "$device" --out "$out/bench-routed-$1.json"
}
# The cascade tuned on val alone and on route + val, from the logits and the chain's evaluate.py rates (seconds).
chain=(--chain "$(basename "${students[-1]}")" "$(basename "${students[0]}")" --chain "$(basename "${students[-1]}")" teacher)
optional 20 cascade-tuning bash -c 'for on in val "route val"; do python benchmarks/route_from_logits.py "$1/logits" \
    --rates "$1/$2.json" --tune-on $on "${@:3}"; done' _ "$out" "$preset" "${chain[@]}"
# The CUDA units before anything is timed again (skipped on a CPU); the scripts' tests once the routing is measured.
cuda_tests units
fallback cheapest-fallback "${students[-1]}"
# Both routings again in calls of 1,024, where a GPU is less launch-bound than at infer.py's default of 256.
for name in selector selector-cheapest-fallback; do
    if [[ -f "$root/$name/summary.json" ]]; then
        optional 30 "evaluate-$name-b1024" python evaluate.py --selector "$root/$name" --name "$preset-$name-b1024" \
            --batch-size 1024 --timing-images 8192 --results-dir "$out" --device "$device"
    fi
done
# infer.py on the test JPEGs as a user runs it on a folder: decoding in the main process, then in 8 workers.
infer_folder() {  # ARCHIVE SELECTOR DEVICE OUT PATTERN
    local folder="data/jpeg-check-$3"  # per device: a dry run unpacks one class only
    [[ -n "$(ls -A "$folder" 2>/dev/null)" ]] || { mkdir -p "$folder" && tar xzf "$1" -C "$folder" --wildcards "$5"; }
    local images; images=$(find "$folder" -type d -name test -print -quit)
    TIMEFORMAT="%R s wall"
    for workers in 0 8; do
        echo "infer.py --workers $workers on $(find "$images" -type f | wc -l) images:"
        time python infer.py "$images" --selector "$2" --device "$3" --workers "$workers" --out "$4/infer-workers$workers.csv"
    done
}
export -f infer_folder
pattern='*test/*'; [[ "$device" == cpu ]] && pattern='*test/airplane/*'  # a dry run: one class
optional 40 infer-folder bash -c 'infer_folder "$@"' _ "$archive" "$root/selector" "$device" "$out" "$pattern"
cuda_tests scripts
optional 130 bench-infer python benchmarks/run.py "${bench[@]}" --parts infer --selector "$root/selector" \
    --device "$device" --out "$out/bench-infer.json"
bench_routed cheapest-fallback
# Whether compiling (inductor, frozen weights) changes which model is fast here: each model compiled and not, in turns.
optional 150 bench-compiled python benchmarks/run.py "${bench[@]}" --parts routed --compile --selector "$root/selector" \
    --device "$device" --out "$out/bench-compiled.json"
optional 150 twins python pipeline.py --preset "$preset" --data-dir "$archive" --root "$root" --results "$out" \
    --device "$device"
fallback fallback "${students[@]}"
bench_routed fallback
optional 60 bench-train python benchmarks/run.py "${bench[@]}" --parts train --device "$device" --out "$out/bench-train.json"
log "all done in $SECONDS s"
