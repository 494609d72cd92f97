"""Inference speed for benchmarks/run.py: the teacher, each student and every routing mode side by side, with
the variants that decide how infer.py runs them (BatchNorm folded or not, float32, NCHW, CUDA graphs or
cache-sized calls), and the reading of photos."""
import copy
import itertools
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse

from distill.checkpoint import model_from_checkpoint
from distill.cli import checkpoint_path
from distill.data import interleave_classes, load_dataset
from distill.images import read_images
from distill.loaders import Loader, normalise
from distill.metrics import in_calls, time_in_turns
from distill.routing.decisions import MODES
from distill.routing.experts import Expert, load_selector, selector_experts, teacher_of
from distill.routing.router import router_for
from distill.runtime import (autocast, cpu_has_native_bf16, fast_inference, fuse_for_inference, inference_model,
                             place)
from models import STUDENTS, TEACHER, build_model


def in_precision(model, device, dtype=None):
    """model under autocast at dtype, or with it off (None): the other precision's figure beside the default's."""
    def run(x):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return model(x)
    return run


def inference_figures(results, routing, device, amp, compile_model, variants=True):
    """Teacher, each student, both students (the original idea) and every routing mode, side by side: at the
    benchmark's batch, and at evaluate.py's batch of 256 with the latency of one image. On a GPU also each of
    them run eagerly (no CUDA graphs). With variants, each model with BatchNorm folded and not, in the other
    precision (float32, or bf16 where --amp auto chose float32 on a CPU with bf16 units), and in NCHW.

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
            fns[f'{name}.fp32_img_s'] = in_precision(model, device)
        elif device.type == 'cpu' and cpu_has_native_bf16():  # what --amp auto turned down on this CPU
            fns[f'{name}.bf16_img_s'] = in_precision(model, device, torch.bfloat16)
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
        elif f'infer.{name}.bf16_img_s' in results:
            results[f'infer.{name}.bf16_speedup'] = results[f'infer.{name}.bf16_img_s'] / results[f'infer.{name}.img_s']
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
    experts = selector_experts(state, selector_path, device)
    students = [e for e in experts if e.state.get('teacher')]
    teacher = Expert(teacher_of(students), device, experts[0].reference())
    selector = inference_model(state, selector_path, device)
    systems = {'': experts}
    if device.type == 'cuda':  # the same routing with every expert run eagerly, to show what CUDA graphs change
        systems['_eager'] = [eager(e) for e in experts]
    test = load_dataset(state['config']['dataset'], state['config']['data_dir'], False, state['image_size'])
    # every class in every slice, round-robin: a test split stored class by class would time one class's mix
    images = normalise(test.select(interleave_classes(test.labels)[:n]).images.to(device), state['mean'], state['std'])
    routers = {mode + suffix: router_for(state, system, selector, mode=mode, amp=amp, where=selector_path,
                                         cost='stored' if mode == 'cascade' or state['routing']['cost'] == 'macs'
                                         else 'measure', batch_size=min(256, len(images)))  # as the calls of 256
               for suffix, system in systems.items() for mode in MODES}
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
