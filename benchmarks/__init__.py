"""Speed benchmarks (run.py and the modules it reads), the one GPU check (gpu_check.sh) and the tools that
route from exported logits on a CPU. Measurements, not tests."""
