"""Speed benchmarks, every figure measured side by side in one run (not tests).

    python benchmarks/run.py --quick                 # a few minutes on a 2-core CPU
    python benchmarks/run.py --selector checkpoints/selector/best.pt   # routed inference with real routing
    python benchmarks/run.py --compile                # also torch.compile (minutes of compiling more)

    python benchmarks/run.py --parts infer --selector checkpoints/selector/best.pt   # inference figures only

Prints a table and writes benchmarks/results/<host>.json (<host>-quick.json with --quick, <host>-infer.json
with --parts infer, ...) with a stable key per figure.
"""
import copy
import itertools
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torch.fx.experimental.optimization import fuse  # noqa: E402

from distill.checkpoint import model_from_checkpoint, write_json  # noqa: E402
from distill.cli import Parser, check_writable, checkpoint_path, main_guard  # noqa: E402
from distill.data import ImageSet, interleave_classes, load_dataset, read_images  # noqa: E402
from distill.loaders import Loader, normalise  # noqa: E402
from distill.engine import WarmupCosine, build_optimizer, train_one_epoch  # noqa: E402
from distill.losses import classification_step, distillation_step  # noqa: E402
from distill.metrics import count_macs, in_calls, time_in_turns  # noqa: E402
from distill.routing.decisions import MODES  # noqa: E402
from distill.routing.experts import Expert, load_experts, load_selector, teacher_of  # noqa: E402
from distill.routing.router import router_for  # noqa: E402
from distill.runtime import (amp_dtype, autocast, configure, device_name, fast_inference,  # noqa: E402
                             fuse_for_inference, inference_model, place, precision_name, resolve_device, synchronize)
from distill.teachers import CachedTeacher, OnlineTeacher  # noqa: E402
from models import STUDENTS, TEACHER, build_model  # noqa: E402


def fake_data(n, size=32, classes=10):
    gen = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen),
                    torch.arange(n) % classes, [str(c) for c in range(classes)])


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


def in_float32(model, device):
    """model with autocast switched off: the float32 figure beside the reduced-precision one."""
    def run(x):
        with torch.autocast(device.type, enabled=False):
            return model(x)
    return run


PARTS = ('train', 'kd', 'infer', 'routed', 'decode')


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
        cached = CachedTeacher(teacher, key_file, {'digest': 'benchmark'}, 0, cache_dir, amp)
        from_cache = lambda model: distillation_step(model, cached, 4.0, 0.9)
        # The first student fills the cache for epochs 0 and 1; the second, timed, only reads it.
        engine_throughput(build_model('googlenet', 10), data, batch, device, from_cache, cached.start_epoch)
        results['kd.googlenet.cached_img_s'] = engine_throughput(build_model('googlenet', 10), data, batch, device,
                                                                 from_cache, cached.start_epoch)
    results['kd.cache_speedup'] = results['kd.googlenet.cached_img_s'] / results['kd.googlenet.online_img_s']


def inference_figures(results, routing, device, amp, compile_model, variants=True):
    """Teacher, each student, both students (the original idea) and every routing mode, side by side: at the
    benchmark's batch, and at evaluate.py's batch of 256 with the latency of one image. On a GPU also each of
    them run eagerly (no CUDA graphs). With variants, each model with BatchNorm folded and not, in float32, and
    in NCHW.

    With a trained selector: its own experts, teacher and routing on its test images (a real mix); without
    one, untrained models on random pixels, and no routed figures (a mix of untrained models means nothing)."""
    teacher, experts, routers, images, raw = routing
    results['infer.images'] = len(images)  # a small test set gives fewer than asked for
    single = {'teacher': teacher, **{e.name: e for e in experts}}  # as infer.py runs them
    fns = {**{f'{name}.img_s': model for name, model in single.items()},
           'all_students.img_s': lambda x: [e(x) for e in experts]}
    if device.type == 'cuda':
        fns.update({f'{name}.eager_img_s': model.model for name, model in single.items()})
    else:  # the whole batch in one call, against the cache-sized calls inference makes on a CPU
        fns.update({f'{name}.whole_batch_img_s': model.model for name, model in single.items()})
    for mode, router in routers.items():
        fns[f'routed_{mode}.img_s'] = router
        results[f'infer.routed_{mode}.share'] = torch.bincount(router(images)[1], minlength=len(experts)).tolist()
    # where a GPU is launch-bound; over several calls, since one batch is a sample of the routing mix
    small = time_in_turns({key: in_calls(fn, 256) for key, fn in fns.items()}, images[:2048], amp)
    results.update({f'infer.b256.{key}': rate['images_per_s'] for key, rate in small.items()})
    results.update({f"infer.latency_ms.{key.removesuffix('img_s').rstrip('._')}": rate['latency_ms']
                    for key, rate in small.items()})
    streamed = [mode for mode in routers if not mode.endswith('_eager')]
    for mode in streamed:  # as infer.py runs a folder: calls of 256, later experts on batches gathered across them
        fns[f'routed_{mode}_stream.img_s'] = lambda x, router=routers[mode]: router.folder(x, 256)
    for name, model in single.items() if variants else ():  # BatchNorm folded or not; the precision; the layout
        fns[f'{name}.folded_img_s'] = fuse(copy.deepcopy(raw[name]))
        fns[f'{name}.unfolded_img_s'] = raw[name]
        nchw = fuse_for_inference(copy.deepcopy(raw[name]).to(memory_format=torch.contiguous_format), device)
        fns[f'{name}.nchw_img_s'] = lambda x, nchw=nchw: nchw(x.contiguous())
        if amp is not None:
            fns[f'{name}.fp32_img_s'] = in_float32(model, device)
    if compile_model:  # inductor with frozen weights: constant-folds BN and pre-packs the convolutions
        from torch._inductor import config as inductor_config
        with inductor_config.patch(freezing=True), torch.inference_mode(), autocast(device, amp):
            for name, model in single.items():
                fns[f'{name}.compiled_img_s'] = torch.compile(getattr(model, 'model', model))
                fns[f'{name}.compiled_img_s'](images)  # compile here, under the freezing setting
    rates = time_in_turns(fns, images, amp, latency=False)  # as infer.py runs: under autocast, best of 5
    results.update({f'infer.{key}': rate['images_per_s'] for key, rate in rates.items()})
    for mode in routers:  # an eager routing against eager models, a graphed one against graphed
        rate = 'eager_img_s' if mode.endswith('_eager') else 'img_s'
        refs = [*single] + ([] if mode.endswith('_eager') else ['all_students'])
        for batch, ref in itertools.product(('', 'b256.'), refs):
            results[f'infer.{batch}routed_{mode}.vs_{ref}'] = (results[f'infer.{batch}routed_{mode}.img_s'] /
                                                              results[f'infer.{batch}{ref}.{rate}'])
    for mode, ref in itertools.product(streamed, single):  # against each model in calls of 256, as infer.py runs
        results[f'infer.routed_{mode}_stream.vs_{ref}'] = (results[f'infer.routed_{mode}_stream.img_s'] /
                                                           results[f'infer.b256.{ref}.img_s'])
    for name in single if variants else ():
        results[f'infer.{name}.folding_speedup'] = (results[f'infer.{name}.folded_img_s'] /
                                                    results[f'infer.{name}.unfolded_img_s'])
        results[f'infer.{name}.nchw_speedup'] = (results[f'infer.{name}.nchw_img_s'] /
                                                 (results[f'infer.{name}.eager_img_s'] if device.type == 'cuda'
                                                  else results[f'infer.{name}.img_s']))
        if amp is not None:
            results[f'infer.{name}.precision_speedup'] = (results[f'infer.{name}.img_s'] /
                                                          results[f'infer.{name}.fp32_img_s'])
    for name in single:
        for batch in ('', 'b256.'):
            speedup, ref = ('graph_speedup', 'eager_img_s') if device.type == 'cuda' else ('chunk_speedup',
                                                                                          'whole_batch_img_s')
            results[f'infer.{batch}{name}.{speedup}'] = (results[f'infer.{batch}{name}.img_s'] /
                                                         results[f'infer.{batch}{name}.{ref}'])
    for name in single:
        if compile_model:
            results[f'infer.{name}.compile_speedup'] = (results[f'infer.{name}.compiled_img_s'] /
                                                        results[f'infer.{name}.img_s'])


def decode_figures(results, count: int, size: int = 32, rounds: int = 3):
    """infer.py's reading of photos (4,000 x 3,000 JPEGs): decoded whole and then resized, against decoded at
    reduced scale by the JPEG decoder (the default); in turns, best of `rounds`; and how far apart the two
    size-px images are, in uint8 levels."""
    from PIL import Image
    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(count):  # smooth content with grain, as a photo has, not pure noise
            coarse = torch.rand(1, 3, 30, 40, generator=gen) * 255
            photo = F.interpolate(coarse, size=(3000, 4000), mode='bicubic') + torch.randn(3, 3000, 4000,
                                                                                         generator=gen) * 8
            paths.append(os.path.join(folder, f'photo{i}.jpg'))
            Image.fromarray(photo[0].clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(paths[-1], quality=90)
        seconds, images = {True: float('inf'), False: float('inf')}, {}
        for _ in range(rounds):
            for reduced in seconds:
                start = time.perf_counter()
                images[reduced], _, failed = read_images(paths, size, reduced_jpeg=reduced)
                seconds[reduced] = min(seconds[reduced], time.perf_counter() - start)
                assert not failed
    difference = (images[True].int() - images[False].int()).abs()
    results.update({'decode.photos': count, 'decode.full_ms_per_photo': 1000 * seconds[False] / count,
                    'decode.reduced_ms_per_photo': 1000 * seconds[True] / count,
                    'decode.reduced_speedup': seconds[False] / seconds[True],
                    'decode.mean_abs_difference': difference.float().mean().item(),
                    'decode.max_abs_difference': difference.max().item()})


def routing_models(selector_path, data, n, device, amp):
    """(teacher, experts, routers, images, {name: model as trained, BatchNorm unfolded}): a trained selector's
    system on its own test images, so that the routing mix is a real one; without one, untrained models of
    the model table on random pixels."""
    if not selector_path:
        images = Loader(data, torch.arange(n), n, [0.5] * 3, [0.25] * 3, device).make_batch(torch.arange(n).to(device))
        models = {'teacher': Untrained(TEACHER, device), **{arch: Untrained(arch, device) for arch in STUDENTS}}
        return models['teacher'], list(models.values())[1:], {}, images, {k: m.raw for k, m in models.items()}
    selector_path = checkpoint_path(selector_path)
    state = load_selector(selector_path)
    experts = load_experts([e['path'] for e in state['experts']], device)
    students = [e for e in experts if e.state.get('teacher')]
    teacher = Expert(teacher_of(students), device, experts[0].reference())
    selector = inference_model(state, selector_path, device)
    systems = {'': experts}
    if device.type == 'cuda':  # the same routing with every expert run eagerly, to show what CUDA graphs change
        systems['_eager'] = [eager(e) for e in experts]
    routers = {mode + suffix: router_for(state, system, selector, mode=mode, amp=amp, where=selector_path,
                                         cost='stored' if mode == 'cascade' or state['routing']['cost'] == 'macs'
                                         else 'measure')
               for suffix, system in systems.items() for mode in MODES}
    test = load_dataset(state['config']['dataset'], state['config']['data_dir'], False, state['image_size'])
    # every class in every slice, round-robin: a test split stored class by class would time one class's mix
    images = normalise(test.select(interleave_classes(test.labels)[:n]).images.to(device), state['mean'], state['std'])
    students = [e for e in experts if e.path != teacher.path]
    raw = {name: place(model_from_checkpoint(m.state, m.path), device).eval()
           for name, m in {'teacher': teacher, **{e.name: e for e in students}}.items()}
    return teacher, students, routers, images, raw


def eager(expert: Expert) -> Expert:
    """The expert run without CUDA graphs."""
    twin = copy.copy(expert)
    twin.forward = expert.model
    return twin


class Untrained:
    """A model of the table with random weights, run as infer.py runs a trained one."""

    def __init__(self, arch, device):
        self.name = arch
        self.raw = place(build_model(arch, 10), device).eval()
        self.model = fuse_for_inference(copy.deepcopy(self.raw), device)
        self.forward = fast_inference(self.model, device)

    def __call__(self, x):
        return self.forward(x)


@main_guard
def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true')
    p.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS),
                   help='which figures: training (engine vs reference, FLOP/s, threads), KD cost, inference (each model and '
                        'routing mode, with variants: BatchNorm folding, float32, NCHW), routed (inference without '
                        'the variants), decode (reading photos: whole, or at reduced scale)')
    p.add_argument('--device', default='auto')
    p.add_argument('--selector', help='a trained selector checkpoint, for routed inference with a real routing mix')
    p.add_argument('--compile', action='store_true',
                   help='also measure torch.compile for training and (with weight freezing) inference; minutes more')
    p.add_argument('--out', help='where the JSON goes (default: benchmarks/results/<host>[-quick][-parts].json)')
    args = p.parse_args()
    # A quick or partial run never replaces the full run's JSON.
    suffix = ('-quick' if args.quick else '') + ('' if set(args.parts) == set(PARTS) else '-' + '-'.join(args.parts))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                                   f'{platform.node()}{suffix}.json')
    check_writable(out)  # before minutes of measuring, not after
    device = resolve_device(args.device)
    configure(device)
    torch.manual_seed(0)
    n, batch = (64, 32) if args.quick else ((8192, 512) if device.type == 'cuda' else (256, 64))
    data = fake_data(n)
    amp = amp_dtype('auto', device)  # what every script runs with by default on this device
    results = {'device': device_name(device), 'torch': torch.__version__, 'precision': precision_name(amp),
               'batch_size': batch, 'images': n, 'parts': args.parts}
    # first: a bad --selector fails before training
    routing = routing_models(args.selector, data, n, device, amp) if {'infer', 'routed'} & set(args.parts) else None
    if 'train' in args.parts:
        training_figures(results, data, batch, device, amp, args.compile)
    if 'kd' in args.parts:
        kd_figures(results, data, batch, device, amp)
    if 'infer' in args.parts or 'routed' in args.parts:
        inference_figures(results, routing, device, amp, args.compile, variants='infer' in args.parts)
    if 'decode' in args.parts:
        decode_figures(results, 2 if args.quick else 8)

    width = max(map(len, results))
    for key, value in results.items():
        print(f'{key:<{width}}  {value:.3g}' if isinstance(value, float) else f'{key:<{width}}  {value}')
    write_json(out, results)
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
