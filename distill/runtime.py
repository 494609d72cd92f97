"""Where and how models run: device, precision, placement, inference copies and torchrun helpers.

The training loop (engine.py) and every script import these; none of them knows about flags.
"""
import copy
import functools
import os
import platform
import sys
import time
from contextlib import nullcontext

import torch
from torch.fx.experimental.optimization import fuse

from . import UserError
from .checkpoint import model_from_checkpoint
from .folder_cache import in_units


def resolve_device(name: str) -> torch.device:
    """'auto', 'cpu', 'cuda' or any torch device string ('cuda:1'); under torchrun each rank gets its own GPU."""
    try:
        device = torch.device('cuda' if name == 'auto' and torch.cuda.is_available() else
                              'cpu' if name == 'auto' else name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown --device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no CUDA device is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f'--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible')
        if device.index is None and 'LOCAL_RANK' in os.environ:  # torchrun: one GPU per process
            return torch.device('cuda', int(os.environ['LOCAL_RANK']))
    elif device.type != 'cpu':
        raise UserError(f"--device {name} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def device_name(device: torch.device) -> str:
    """What a timing was measured on: the GPU's name, or the CPU's model, the vector units torch uses on it
    and the thread count (two CPUs that share a model name can still differ in bf16 support)."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    units = torch.backends.cpu.get_cpu_capability() + (' + native bf16' if cpu_has_native_bf16() else '')
    return f'CPU ({cpu_model()}, {units}, {torch.get_num_threads()} threads)'


def cpu_model(cpuinfo: str = '/proc/cpuinfo') -> str:
    """The CPU's model as the OS names it. On Linux with its family and model numbers, which tell apart the
    generations that a virtual machine calls by one name ('AMD EPYC')."""
    try:
        with open(cpuinfo) as f:
            fields = dict(line.split(':', 1) for line in f.read().split('\n\n')[0].splitlines() if ':' in line)
    except OSError:  # not Linux
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    name = fields.get('model name') or platform.machine()  # ARM's cpuinfo has no model name
    if 'cpu family' in fields and 'model' in fields:
        return f"{name}, family {fields['cpu family']} model {fields['model']}"
    return name


def free_memory(meminfo: str = '/proc/meminfo', cgroups: str = '/sys/fs/cgroup',
                own_cgroups: str = '/proc/self/cgroup') -> int | None:
    """Bytes this process may still fill before the OS kills it: Linux's MemAvailable plus free swap, within
    the tightest memory limit of its cgroup and the cgroups above it (Docker, Kubernetes, SLURM); None where
    the OS does not say."""
    try:
        with open(meminfo) as f:
            fields = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in f if len(line.split()) > 1}
        free = fields['MemAvailable'] + fields.get('SwapFree', 0)
    except (OSError, ValueError, KeyError):
        return None
    return min([free, *_cgroup_rooms(cgroups, own_cgroups)])


# cgroup v2 (hierarchy id 0, no controller named) and v1's memory controller: limit, usage, reclaimable cache
_CGROUP_FILES = {2: ('', 'memory.max', 'memory.current', 'inactive_file'),
                 1: ('memory', 'memory.limit_in_bytes', 'memory.usage_in_bytes', 'total_inactive_file')}
_NO_LIMIT = 2**60  # v1 writes "no limit" as a number near 2**63


def _cgroup_rooms(cgroups: str, own_cgroups: str):
    """Room left under each memory limit on the way up from this process's cgroup. Usage counts the page
    cache, whose inactive part the kernel reclaims before it kills (as `docker stats` does). A container
    with its own cgroup namespace sees its cgroup as '/', mounted at `cgroups`; one without sees the host's
    path, which is absent there, and the walk up reaches the mount."""
    try:
        with open(own_cgroups) as f:
            lines = [line.rstrip('\n').split(':', 2) for line in f if line.count(':') >= 2]
    except OSError:
        return []
    rooms = []
    for _, controllers, path in lines:
        version = 2 if controllers == '' else 1 if 'memory' in controllers.split(',') else None
        if version is None:
            continue
        mount, limit_file, usage_file, reclaimable = _CGROUP_FILES[version]
        parts = [part for part in path.split('/') if part]
        for depth in range(len(parts), -1, -1):
            folder = os.path.join(cgroups, mount, *parts[:depth])
            try:
                with open(os.path.join(folder, limit_file)) as f:
                    limit = f.read().strip()
                if limit == 'max' or int(limit) >= _NO_LIMIT:
                    continue
                with open(os.path.join(folder, usage_file)) as f:
                    used = int(f.read())
                rooms.append(int(limit) - used + _stat(os.path.join(folder, 'memory.stat'), reclaimable))
            except (OSError, ValueError):
                continue
    return rooms


def _stat(path: str, key: str) -> int:
    try:
        with open(path) as f:
            return next((int(line.split()[1]) for line in f if line.split()[:1] == [key]), 0)
    except (OSError, ValueError):
        return 0


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 in hardware; elsewhere it is emulated and far slower than float32."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ('_is_avx512_bf16_supported',
                                                                          '_is_amx_tile_supported'))


BF16_MIN_SPEEDUP = 1.2  # below it, float32's precision is worth more than the time bf16 saves


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster this CPU runs a 3x3 convolution of these models' kind in bf16 than in float32,
    timed once per process (best of 5 calls each). Native bf16 need not pay: AVX512-BF16 without AMX can lose to
    float32 on a CPU with two AVX-512 FMA units. 0 where bf16 is emulated (not timed)."""
    if not cpu_has_native_bf16():
        return 0.0
    generator = torch.Generator().manual_seed(0)  # not the global generator: training's draws stay as seeded
    weight = torch.randn(64, 64, 3, 3, generator=generator)
    images = torch.randn(32, 64, 16, 16, generator=generator).contiguous(memory_format=torch.channels_last)
    seconds = {}
    with torch.inference_mode():
        for dtype in (None, torch.bfloat16):
            with autocast(torch.device('cpu'), dtype):
                torch.nn.functional.conv2d(images, weight, padding=1)  # oneDNN's first call picks its kernel
                seconds[dtype] = min(_seconds(torch.nn.functional.conv2d, images, weight, padding=1)
                                     for _ in range(5))
    return seconds[None] / seconds[torch.bfloat16]


def _seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def cpu_bf16_pays() -> bool:
    """Whether --amp auto runs bf16 on this CPU: where it is measured clearly faster. Under torchrun every
    process takes rank 0's answer, so that all train at one precision."""
    pays = cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == 'gloo':
        answer = torch.tensor([int(pays)])
        dist.broadcast(answer, 0)
        pays = bool(answer.item())
    return pays


def amp_dtype(name: str, device: torch.device):
    """The autocast dtype for --amp on this device, or None for full precision."""
    if name == 'off':
        return None
    if device.type != 'cuda':
        if name == 'fp16':
            raise UserError('--amp fp16 needs CUDA; on CPU use --amp bf16 or --amp off')
        if name == 'bf16' and not cpu_has_native_bf16():
            warn_emulated_bf16()
        return torch.bfloat16 if name == 'bf16' or cpu_bf16_pays() else None
    if name == 'fp16' or (name == 'auto' and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


@functools.cache
def warn_emulated_bf16():
    """Once a process: the user asked for bf16, which this CPU can only emulate."""
    if process_rank() == 0:
        print('warning: this CPU has no bf16 units (AVX512-BF16 or AMX), so --amp bf16 runs emulated, far '
              'slower than float32; use --amp auto', file=sys.stderr)


def precision_name(amp) -> str:
    """'bfloat16', 'float16' or 'float32': what an --amp setting resolved to, for summaries and reports."""
    return str(amp or torch.float32).removeprefix('torch.')


def precision_text(setting: str, amp, device: torch.device) -> str:
    """What --amp resolved to; where auto chose float32 on a CPU with bf16 units, why."""
    text = precision_name(amp)
    if setting == 'auto' and amp is None and device.type == 'cpu' and cpu_has_native_bf16():
        text += f' (bf16 ran {cpu_bf16_speedup():.2f}x as fast here)'
    return text


def autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def configure(device: torch.device):
    """Per-process settings for speed: cuDNN picks the fastest convolution for each fixed input shape."""
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# More bytes of activations per byte of float32 input than any model of the table holds (tests/test_runtime.py)
MAX_ACTIVATIONS_PER_INPUT_BYTE = 4096


def training_activation_bytes(model, image_size: int) -> int:
    """Bytes of float32 activations that one image holds from the forward pass to the backward one, counted on
    the meta device: a copy of the model runs on shapes alone, computing nothing."""
    meta = copy.deepcopy(model).to('meta').train()

    def held(batch: int) -> int:
        saved = {}

        def pack(tensor):
            saved[id(tensor)] = tensor  # one tensor saved by two layers is held once
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            meta(torch.empty(batch, 3, image_size, image_size, device='meta'))
        return sum(t.numel() * t.element_size() for t in saved.values())
    return held(2) - held(1)  # the weights, saved at any batch, cancel out


def check_training_fits(model, image_size: int, batch_size: int, device: torch.device, amp):
    """On a CPU, a training batch whose activations cannot fit in memory is refused in one line, where the OS
    would kill the run without a word; a GPU's allocator raises instead, which the scripts report."""
    room = free_memory()
    if device.type != 'cpu' or room is None or \
            batch_size * 3 * image_size ** 2 * 4 * MAX_ACTIVATIONS_PER_INPUT_BYTE < room:
        return  # cheap: the meta pass is not needed where no model of the table could come near
    per_image = training_activation_bytes(model, image_size) // (2 if amp else 1)  # half-precision: at least half
    if batch_size * per_image > room:
        fits = room * 3 // 4 // per_image  # a margin for what the count leaves out: weights, gradients, the optimiser
        smaller = f'pass --batch-size {fits} or less, or' if fits >= 2 else 'pass'
        raise UserError(f'a training batch of {batch_size} images at {image_size} px holds at least '
                        f'{in_units(batch_size * per_image)} of activations, more than the {in_units(room)} of '
                        f'free memory, and the OS would kill this run; {smaller} a smaller --image-size')


def place(model, device: torch.device):
    """Move a model to the device in channels_last: NHWC is what tensor cores and oneDNN's fast kernels want."""
    return model.to(device, memory_format=torch.channels_last)


_KEPT_ON_HOST = set()


def place_data(images: torch.Tensor, device, share: float = 0.5) -> torch.Tensor:
    """Images on the device where they fit in `share` of its free memory (the rest is for the models); else
    left in host memory, or mapped from disk, and each batch is copied over as it is drawn."""
    device = torch.device(device)
    if device.type == 'cuda' and images.device.type == 'cpu':
        free = torch.cuda.mem_get_info(device)[0]
        if images.nbytes > share * free:
            if images.data_ptr() not in _KEPT_ON_HOST:  # every loader of the set asks: said once
                _KEPT_ON_HOST.add(images.data_ptr())
                print(f"note: the {len(images)} images ({images.nbytes / 2**30:.1f} GiB) do not fit in the GPU's "
                      f"{free / 2**30:.1f} GiB of free memory; they stay in host memory and each batch is copied "
                      f"over", file=sys.stderr)
            return images
    return images.to(device)


def fuse_for_inference(model, device: torch.device | None = None):
    """An eval-mode model, with each BatchNorm folded into the convolution before it (torch.fx) on the CPU.

    Folding is exact up to rounding; it is applied only where benchmarks/run.py measured a gain: oneDNN on
    the CPU, not cuDNN, whose fused kernels already absorb BatchNorm. A model fx cannot trace stays unfused."""
    model.eval()
    on_cpu = device is None or torch.device(device).type == 'cpu'
    if not on_cpu:
        return model
    try:
        return fuse(model)
    except Exception:  # tracing fails on data-dependent control flow; folding is only an optimisation
        return model


def bucket_size(n: int) -> int:
    """The batch size a graph is captured for: n rounded up to one of four sizes per doubling, so that
    padding adds at most a quarter of the work and a few dozen graphs cover every batch up to a thousand."""
    if n <= 8:
        return n
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step


class CudaGraphs:
    """fn(x) replayed from CUDA graphs, one per bucket_size of the batch up to max_batch, captured on its first use.

    Eagerly a GPU pays one launch from Python per layer; at small batches that costs more than the arithmetic,
    and a cascade's later stages only ever see small batches. A graph replays all of a model's kernels at once.
    Each graph is captured under the autocast precision of its first call, with autocast's weight cache off
    (a cached cast would be freed under the graph). The graphs share one memory pool: they run one at a time
    and each output is copied out. Where capture fails, fn runs eagerly."""
    # Above this batch the launches are amortised: eager is as fast, and a graph would hold its whole
    # activation memory (benchmarks/run.py times both; docs/gpu.md).
    max_batch = 1024

    def __init__(self, fn):
        self.fn, self.graphs, self.pool = fn, {}, None

    def __call__(self, x):
        n = len(x)
        if n > self.max_batch:
            return self.fn(x)
        precision = torch.get_autocast_dtype('cuda') if torch.is_autocast_enabled('cuda') else None
        key = (bucket_size(n), tuple(x.shape[1:]), x.dtype, precision)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, key[0], precision)
        if self.graphs[key] is None:
            return self.fn(x)
        graph, static_input, static_output = self.graphs[key]
        static_input[:n].copy_(x)
        with torch.cuda.device(x.device):
            graph.replay()
        if isinstance(static_output, torch.Tensor):
            return static_output[:n].clone()
        return tuple(out[:n].clone() for out in static_output)

    def _capture(self, x, size, precision):
        with torch.cuda.device(x.device):  # capture on the input's GPU, whichever is current
            return self._capture_here(x, size, precision)

    def _capture_here(self, x, size, precision):
        static_input = torch.zeros((size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        if x.dim() == 4:
            static_input = static_input.contiguous(memory_format=torch.channels_last)
        static_input[:len(x)].copy_(x)
        precision_ctx = torch.autocast('cuda', dtype=precision or torch.float16, enabled=precision is not None,
                                       cache_enabled=False)
        try:
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side), precision_ctx:  # warm-up: cuDNN autotunes outside the capture
                self.fn(static_input), self.fn(static_input)
            torch.cuda.current_stream(x.device).wait_stream(side)
            self.pool = self.pool or torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool), precision_ctx:
                static_output = self.fn(static_input)
        except RuntimeError as e:  # a model graphs cannot hold (host syncs, CPU tensors): eager is only slower
            print(f'warning: CUDA graph capture failed ({str(e).splitlines()[0]}); running eagerly', file=sys.stderr)
            return None
        return graph, static_input, static_output


class CpuChunks:
    """fn(images) on a CPU in calls of at most `pixels` image pixels (64 images at 32 px, 256 at 16 px).

    Per image, a CPU runs a convolutional network slower once a call's activations outgrow its caches, so a
    large batch is faster in parts (benchmarks/run.py times both; docs/speed.md). Other inputs pass through."""
    pixels = 64 * 32 * 32

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, images):
        size = max(1, self.pixels // (images.shape[-2] * images.shape[-1])) if images.dim() == 4 else len(images)
        if len(images) <= size:
            return self.fn(images)
        return torch.cat([self.fn(part) for part in images.split(size)])


def fast_inference(fn, device: torch.device):
    """fn as inference should run it on this device: from CUDA graphs on a GPU, in cache-sized calls on a CPU."""
    return CudaGraphs(fn) if torch.device(device).type == 'cuda' else CpuChunks(fn)


def inference_model(state: dict, path: str, device: torch.device):
    """The model of a loaded checkpoint, on the device, in eval mode (folded where that helps)."""
    return fuse_for_inference(place(model_from_checkpoint(state, path), device), device)


def read_later(tensor: torch.Tensor):
    """A function that returns tensor.tolist() as it is now. On a GPU the copy to the host starts now and the
    GPU is not waited for until the function is called, so the host can queue more work first."""
    if tensor.device.type != 'cuda':
        values = tensor.tolist()
        return lambda: values
    host = tensor.to('cpu', non_blocking=True)  # into pinned memory
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(tensor.device))

    def read():
        copied.synchronize()
        return host.tolist()
    return read


def synchronize(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def world_size() -> int:
    """How many processes torchrun started for this run (1 without torchrun), known before they connect."""
    return int(os.environ.get('WORLD_SIZE', 1))


def process_rank() -> int:
    """This process's rank under torchrun (0 without it), known before the processes connect."""
    return int(os.environ.get('RANK', 0))


def init_distributed(device: torch.device):
    """(device, rank, world size). Under torchrun: one process per GPU (nccl) or per CPU worker (gloo)."""
    world = world_size()
    if world == 1:
        return device, 0, 1
    dist = torch.distributed
    if device.type == 'cuda':
        torch.cuda.set_device(device)  # resolve_device gave this rank its own GPU
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return device, dist.get_rank(), world


def barrier(world: int):
    if world > 1:
        torch.distributed.barrier()


def reduce_sums(*values, device):
    """Sum values over ranks when running under torchrun."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()
