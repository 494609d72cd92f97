"""What the scripts here read: the H200 run-4 experts that gpu_check.sh brought back, where the README's commands
put them (checkpoints/h200d/, results/h200d/gpu-check/logits/; docs/gpu.md). They are not in the repository: a
script run without them says so in one line, not in a traceback."""
import os
import sys


def require(*paths: str):
    missing = next((path for path in paths if not os.path.exists(path)), None)
    if missing:
        print(f"error: '{missing}' is not here: this script reads the H200 run's experts; run bash "
              f"benchmarks/gpu_check.sh on a GPU and place its output as docs/gpu.md says", file=sys.stderr)
        sys.exit(2)
