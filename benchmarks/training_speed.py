"""Training speed for benchmarks/run.py: our engine against the loop most CIFAR repositories use, float32
beside the default precision, torch's thread counts on a CPU, the FLOP/s reached against a plain matmul, and
a student's cost with its teacher run online against read from the logit cache."""
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

from distill.engine import WarmupCosine, build_optimizer, train_one_epoch
from distill.loaders import Loader
from distill.losses import classification_step, distillation_step
from distill.metrics import count_macs
from distill.runtime import amp_dtype, autocast, fuse_for_inference, place, precision_name, synchronize
from distill.teachers import CachedTeacher, OnlineTeacher
from models import TEACHER, build_model


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def engine_throughput(model, data, batch, device, step_fn=None, on_epoch=None, compile_model=False, amp='auto'):
    """img/s of our engine: uint8 data on the device, batched crop/flip, channels_last, --amp `amp`; one epoch
    after a warm-up (which also compiles, with compile_model)."""
    model = place(model, device)
    model = torch.compile(model) if compile_model else model
    loader = Loader(data, torch.arange(len(data)), batch, [0.5] * 3, [0.25] * 3, device, train=True)
    optimizer = build_optimizer(model, 0.01, 5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(100, 0))
    step = step_fn(model) if step_fn else classification_step(model)
    amp = amp_dtype(amp, device)

    def epoch(e):
        loader.set_epoch(e)
        if on_epoch:
            on_epoch(loader)
        train_one_epoch(model, loader, optimizer, scheduler, step, amp=amp)
    epoch(0)
    return len(loader) * batch / timed(lambda: epoch(1), device)


def reference_throughput(model, data, batch, device):
    """img/s of the loop most CIFAR repos use: PIL transforms in a DataLoader, fp32 NCHW, plain SGD."""
    from torchvision import transforms
    from PIL import Image

    class PilDataset(torch.utils.data.Dataset):
        tf = transforms.Compose([transforms.RandomCrop(data.images.shape[-1], padding=4),
                                 transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                 transforms.Normalize([0.5] * 3, [0.25] * 3)])

        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return self.tf(Image.fromarray(data.images[i].permute(1, 2, 0).numpy())), int(data.labels[i])
    loader = torch.utils.data.DataLoader(PilDataset(), batch_size=batch, shuffle=True, drop_last=True, num_workers=2,
                                         persistent_workers=True)
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def epoch():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    epoch()
    return len(loader) * batch / timed(epoch, device)


def thread_scaling(arch, batch, amp, rounds=3) -> dict:
    """CPU only: threads -> img/s of one train step on a fixed batch at 1, half and all of torch's intra-op
    threads, the counts taking turns within each round."""
    cpu = torch.device('cpu')
    model = place(build_model(arch, 10), cpu).train()
    images = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    optimizer, step = build_optimizer(model, 0.01, 5e-4), classification_step(model)

    def train_step():
        with autocast(cpu, amp):
            loss, _ = step(images, labels, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    default, rates = torch.get_num_threads(), {}
    counts = sorted({1, max(default // 2, 1), default})
    for _ in range(rounds):
        for threads in counts:
            torch.set_num_threads(threads)
            train_step()  # warm-up: oneDNN builds kernels per thread count
            rates[threads] = max(rates.get(threads, 0), 2 * batch / timed(lambda: (train_step(), train_step()), cpu))
    torch.set_num_threads(default)
    return rates


def matmul_flops(device, dtype=torch.float32, n=2048, repeats=5):
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return 2 * n ** 3 * repeats / timed(lambda: [a @ b for _ in range(repeats)], device)


def train_with_peak_memory(arch, data, batch, device, compile_model=False, amp='auto'):
    """(img/s, peak MB) of our engine training arch. CUDA: max_memory_allocated of this step alone. CPU: the
    peak RSS of a fresh process that trains only this model (the RSS high-water mark never resets)."""
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        rate = engine_throughput(build_model(arch, 10), data, batch, device, compile_model=compile_model, amp=amp)
        return rate, torch.cuda.max_memory_allocated(device) / 2 ** 20
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as pool:
        return pool.submit(_train_in_child, arch, data, batch, compile_model, amp).result()


def _train_in_child(arch, data, batch, compile_model, amp):
    rate = engine_throughput(build_model(arch, 10), data, batch, torch.device('cpu'), compile_model=compile_model,
                             amp=amp)
    return rate, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_figures(results, data, batch, device, amp, compile_model):
    """Our engine against the reference loop, fp32 beside the default precision, threads, FLOP fraction."""
    for arch in ('resnet50', 'densenet121', 'googlenet'):
        ours, results[f'train.{arch}.peak_mem_mb'] = train_with_peak_memory(arch, data, batch, device)
        results[f'train.{arch}.ours_img_s'] = ours
        if amp is not None:  # how much of the gain is the loop and how much the precision
            results[f'train.{arch}.ours_fp32_img_s'], _ = train_with_peak_memory(arch, data, batch, device, amp='off')
        if compile_model:
            compiled, _ = train_with_peak_memory(arch, data, batch, device, compile_model=True)
            results[f'train.{arch}.compiled_img_s'] = compiled
            results[f'train.{arch}.compile_speedup'] = compiled / ours
        reference = reference_throughput(build_model(arch, 10), data, batch, device)
        results[f'train.{arch}.reference_img_s'] = reference
        results[f'train.{arch}.speedup'] = ours / reference
        if amp is not None:
            results[f'train.{arch}.fp32_speedup'] = results[f'train.{arch}.ours_fp32_img_s'] / reference

    if device.type == 'cpu':  # is torch's default thread count the fastest?
        for threads, rate in thread_scaling('resnet50', batch, amp).items():
            results[f'train.resnet50.threads_{threads}_img_s'] = rate

    # Achieved FLOP/s of a ResNet50 train step (forward + backward = 3x forward FLOPs) against the fp32 matmul;
    # in reduced precision also against a matmul in that precision, like for like.
    train_flops = 3 * 2 * count_macs(build_model('resnet50', 10), 32)
    results['resnet50.train_flop_s'] = results['train.resnet50.ours_img_s'] * train_flops
    results['matmul_fp32_flop_s'] = matmul_flops(device)
    results['resnet50.fraction_of_matmul'] = results['resnet50.train_flop_s'] / results['matmul_fp32_flop_s']
    if amp is not None:
        name = precision_name(amp)
        results[f'matmul_{name}_flop_s'] = matmul_flops(device, amp)
        results[f'resnet50.fraction_of_{name}_matmul'] = (results['resnet50.train_flop_s'] /
                                                          results[f'matmul_{name}_flop_s'])
        results['resnet50.fp32_fraction_of_matmul'] = (results['train.resnet50.ours_fp32_img_s'] * train_flops /
                                                       results['matmul_fp32_flop_s'])


def kd_figures(results, data, batch, device, amp):
    """A student's img/s with the teacher run online against reading the logit cache."""
    teacher = fuse_for_inference(place(build_model(TEACHER, 10), device), device)
    online = OnlineTeacher(teacher, amp)
    kd = lambda model: distillation_step(model, online, 4.0, 0.9)
    results['kd.googlenet.online_img_s'] = engine_throughput(build_model('googlenet', 10), data, batch, device, kd)
    with tempfile.TemporaryDirectory() as cache_dir:
        key_file = os.path.join(cache_dir, 'teacher.pt')  # the cache is keyed by the teacher file's bytes
        torch.save(teacher.state_dict(), key_file)
        cached = CachedTeacher(teacher, key_file, {'digest': 'benchmark'}, data.images, 0, cache_dir, amp)
        from_cache = lambda model: distillation_step(model, cached, 4.0, 0.9)
        # The first student fills the cache for epochs 0 and 1; the second, timed, only reads it.
        engine_throughput(build_model('googlenet', 10), data, batch, device, from_cache, cached.start_epoch)
        results['kd.googlenet.cached_img_s'] = engine_throughput(build_model('googlenet', 10), data, batch, device,
                                                                 from_cache, cached.start_epoch)
    results['kd.cache_speedup'] = results['kd.googlenet.cached_img_s'] / results['kd.googlenet.online_img_s']
