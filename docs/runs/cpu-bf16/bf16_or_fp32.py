"""Does bf16 pay on this CPU? The teacher and both students in float32 and in bf16 autocast, in turns: inference
(BatchNorm folded, channels_last, batch 256) and a training step (half the batch), beside the convolution probe
that --amp auto decides by (distill.runtime.cpu_bf16_speedup). Where bf16 is emulated, a smaller batch keeps
the run within minutes.

    PYTHONPATH=. python docs/runs/cpu-bf16/bf16_or_fp32.py [--batch 256]
"""
import argparse
import time

import torch
import torch.nn.functional as F

from distill.runtime import BF16_MIN_SPEEDUP, amp_dtype, cpu_bf16_speedup, device_name, fuse_for_inference
from models import STUDENTS, TEACHER, build_model

CPU = torch.device('cpu')
PRECISIONS = {'float32': dict(enabled=False), 'bf16': dict(dtype=torch.bfloat16)}


def best_rate(step, images: int, rounds: int = 3, calls: int = 3) -> dict:
    """Images per second of each precision, best of `rounds` rounds in which both take turns."""
    rates = {name: 0.0 for name in PRECISIONS}
    for _ in range(rounds):
        for name, kwargs in PRECISIONS.items():
            with torch.autocast('cpu', **kwargs):
                step()  # warm-up: oneDNN picks its kernels for this precision
                for _ in range(calls):
                    start = time.perf_counter()
                    step()
                    rates[name] = max(rates[name], images / (time.perf_counter() - start))
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=256, help='inference batch; training takes half of it')
    batch_size = parser.parse_args().batch
    torch.manual_seed(0)
    print(device_name(CPU), f'torch {torch.__version__}, inference batch {batch_size}')
    print(f'probe: bf16 runs the convolution {cpu_bf16_speedup():.2f}x as fast as float32 (bf16 when >= '
          f'{BF16_MIN_SPEEDUP}); --amp auto here: {amp_dtype("auto", CPU) or "float32"}')
    for arch in (TEACHER, *STUDENTS):
        model = fuse_for_inference(build_model(arch, 10).eval(), CPU).to(memory_format=torch.channels_last)
        images = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            infer = best_rate(lambda: model(images), len(images))
        model = build_model(arch, 10).train().to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        batch, labels = images[:batch_size // 2], torch.randint(0, 10, (batch_size // 2,))

        def train_step():
            loss = F.cross_entropy(model(batch).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        train = best_rate(train_step, len(batch), calls=2)
        print(f"{arch:12s} inference img/s float32 {infer['float32']:6.1f}  bf16 {infer['bf16']:6.1f}  "
              f"bf16/float32 {infer['bf16'] / infer['float32']:.2f}x | training img/s float32 {train['float32']:5.1f}  "
              f"bf16 {train['bf16']:5.1f}  bf16/float32 {train['bf16'] / train['float32']:.2f}x", flush=True)


if __name__ == '__main__':
    main()
