#!/usr/bin/env bash
# The one GPU check: the fast preset end to end, then the GPU benchmark, every result written to files.
#
#   bash benchmarks/gpu_check.sh ARCHIVE [OUT]            # on one GPU: sized for 10 minutes on an H100
#   bash benchmarks/gpu_check.sh --dry-run ARCHIVE [OUT]  # the same steps at tiny size on a CPU, a few minutes
#
# ARCHIVE is the CIFAR-10 .tar.gz (train/<class>/*, test/<class>/*). OUT (default results/gpu-check) gets
# progress.log, the per-stage logs, the runs' metrics and summaries, the evaluate report and figures,
# both benchmark JSONs and the experts' logits on route, val and test (for routing work on a CPU).
# Needs only the torch already installed: nothing is downloaded or pip-installed.
set -euo pipefail
cd "$(dirname "$0")/.."

preset=fast; bench=(); device=cuda
if [[ "${1:-}" == "--dry-run" ]]; then
    preset=smoke; bench=(--quick); device=cpu; shift
fi
archive="${1:?usage: benchmarks/gpu_check.sh [--dry-run] ARCHIVE [OUT]}"
out="${2:-results/gpu-check}"
[[ -f "$archive" ]] || { echo "error: archive '$archive' not found; pass the CIFAR-10 .tar.gz" >&2; exit 2; }
mkdir -p "$out/logs"
root="checkpoints/gpu-check-$preset"  # big files stay out of OUT
export DISTILL_CACHE="data/cache"

log() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$out/progress.log"; }
stage() {  # stage NAME COMMAND...: run, log its output, time it
    local name=$1; shift
    log "start $name: $*"
    local start=$SECONDS
    "$@" > "$out/logs/$name.log" 2>&1 || { log "FAILED $name (exit $?), see $out/logs/$name.log"; exit 1; }
    log "done $name in $((SECONDS - start)) s"
}

log "gpu_check $preset on $(python -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")'), torch $(python -c 'import torch; print(torch.__version__)')"
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() or sys.argv[1] == "cpu" else 1)' "$device" \
    || { log "no CUDA device visible; use --dry-run on a CPU"; exit 2; }
# Training speed first: the engine's img/s targets do not depend on the chain finishing in time.
stage bench-train python benchmarks/run.py "${bench[@]}" --parts train --device "$device" --out "$out/bench-train.json"
chain_start=$SECONDS
stage pipeline python pipeline.py --preset "$preset" --data-dir "$archive" --root "$root" --results "$out" --device "$device"
log "whole chain: $((SECONDS - chain_start)) s wall"
stage bench-infer python benchmarks/run.py "${bench[@]}" --parts infer --selector "$root/selector" --device "$device" \
    --out "$out/bench-infer.json"
stage export-logits python benchmarks/export_logits.py --selector "$root/selector" --out "$out/logits" --device "$device"
for run in "$root"/*/; do  # the small files of every run; checkpoints stay behind
    name=$(basename "$run")
    [[ "$name" == logit-cache ]] && continue
    mkdir -p "$out/runs/$name" && cp "$run"/*.json "$run"/*.csv "$out/runs/$name/" 2>/dev/null || true
done
log "all done in $SECONDS s"
