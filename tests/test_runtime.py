"""distill/runtime.py: devices, precision."""
import pytest
import torch

import distill.runtime as runtime
from conftest import CUDA_MARKS, needs_cuda
from distill import UserError
from models import STUDENTS, TEACHER, build_model, stem_stride_for

CPU = torch.device('cpu')


@pytest.mark.parametrize('speedup', [0.0, 0.6, 1.1, 1.2, 2.0])  # 0: emulated; 0.6: native, slower than float32
def test_auto_precision_on_cpu_is_bf16_only_where_it_is_measured_clearly_faster(monkeypatch, speedup):
    monkeypatch.setattr(runtime, 'cpu_bf16_speedup', lambda: speedup)
    assert runtime.amp_dtype('auto', CPU) == (torch.bfloat16 if speedup >= 1.2 else None)
    assert runtime.amp_dtype('bf16', CPU) == torch.bfloat16 and runtime.amp_dtype('off', CPU) is None


@pytest.mark.parametrize('native', [True, False])
def test_the_bf16_probe_times_only_native_bf16_and_leaves_the_seeded_generator_alone(monkeypatch, native):
    monkeypatch.setattr(runtime, 'cpu_has_native_bf16', lambda: native)
    runtime.cpu_bf16_speedup.cache_clear()
    try:
        torch.manual_seed(3)
        expected = torch.rand(4)
        torch.manual_seed(3)
        speedup = runtime.cpu_bf16_speedup()
        assert torch.equal(torch.rand(4), expected)  # a stage seeded before it draws as seeded
        assert speedup > 0 if native else speedup == 0
    finally:
        runtime.cpu_bf16_speedup.cache_clear()


@pytest.mark.parametrize('native, setting, text', [(True, 'auto', 'float32 (bf16 ran 0.61x as fast here)'),
                                                    (True, 'off', 'float32'), (False, 'auto', 'float32')])
def test_a_cpu_run_says_why_auto_chose_float32_where_the_cpu_has_bf16_units(monkeypatch, native, setting, text):
    monkeypatch.setattr(runtime, 'cpu_has_native_bf16', lambda: native)
    monkeypatch.setattr(runtime, 'cpu_bf16_speedup', lambda: 0.61 if native else 0.0)
    assert runtime.precision_text(setting, runtime.amp_dtype(setting, CPU), CPU) == text


@pytest.mark.parametrize('native', [True, False])
def test_bf16_asked_for_on_a_cpu_that_only_emulates_it_is_run_with_one_warning(monkeypatch, capsys, native):
    monkeypatch.setattr(runtime, 'cpu_has_native_bf16', lambda: native)
    runtime.warn_emulated_bf16.cache_clear()
    try:
        assert runtime.amp_dtype('bf16', CPU) == torch.bfloat16 and runtime.amp_dtype('bf16', CPU) == torch.bfloat16
        runtime.amp_dtype('auto', CPU)
        warnings = [line for line in capsys.readouterr().err.splitlines() if '--amp bf16 runs emulated' in line]
        assert len(warnings) == (0 if native else 1)  # cli checks --amp before the script resolves it: said once
    finally:
        runtime.warn_emulated_bf16.cache_clear()


def test_under_torchrun_every_process_runs_at_rank_0s_precision(monkeypatch):
    monkeypatch.setattr(runtime, 'cpu_bf16_speedup', lambda: 0.6)  # this process alone would run float32
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.distributed, 'get_backend', lambda: 'gloo')  # torchrun's on CPUs
    monkeypatch.setattr(torch.distributed, 'broadcast', lambda tensor, src: tensor.fill_(1))  # rank 0 chose bf16
    assert runtime.amp_dtype('auto', CPU) == torch.bfloat16


def test_fp16_on_cpu_is_refused():
    with pytest.raises(UserError, match='--amp fp16 needs CUDA'):
        runtime.amp_dtype('fp16', CPU)


@pytest.mark.parametrize('name, message', [('gpu7', "unknown --device 'gpu7'"), ('meta', 'not supported'),
                                           ('cuda:1', 'no CUDA device is visible')])
def test_a_device_this_machine_cannot_use_is_one_clear_error(name, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(UserError, match=message):
        runtime.resolve_device(name)


EPYC = 'processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\nmodel name\t: AMD EPYC\n'


def test_cpus_a_virtual_machine_names_alike_are_told_apart_by_family_and_model(tmp_path):
    genoa, milan = tmp_path / 'genoa', tmp_path / 'milan'
    genoa.write_text('\n'.join(EPYC.format(n=n, model=17) for n in range(2)))
    milan.write_text(EPYC.format(n=0, model=1))
    assert runtime.cpu_model(str(genoa)) == 'AMD EPYC, family 25 model 17'
    assert runtime.cpu_model(str(milan)) == 'AMD EPYC, family 25 model 1'


def test_a_cpu_without_cpuinfo_model_fields_is_named_by_its_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.platform, 'machine', lambda: 'aarch64')
    arm = tmp_path / 'arm'
    arm.write_text('processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n')
    assert runtime.cpu_model(str(arm)) == 'aarch64'
    monkeypatch.setattr(runtime.platform, 'processor', lambda: '')
    assert runtime.cpu_model(str(tmp_path / 'absent')) == 'aarch64'


@pytest.mark.parametrize('native', [True, False])
def test_a_cpu_timing_names_the_model_vector_units_and_threads(monkeypatch, native):
    monkeypatch.setattr(runtime, 'cpu_model', lambda: 'AMD EPYC, family 25 model 17')
    monkeypatch.setattr(runtime, 'cpu_has_native_bf16', lambda: native)
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512')
    assert runtime.device_name(CPU) == (f"CPU (AMD EPYC, family 25 model 17, AVX512{' + native bf16' * native}, "
                                        f"{torch.get_num_threads()} threads)")


def test_any_torch_device_string_is_accepted(monkeypatch):
    assert runtime.resolve_device('cpu') == CPU and runtime.resolve_device('auto').type in ('cpu', 'cuda')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert runtime.resolve_device('cuda:1') == torch.device('cuda', 1)
    with pytest.raises(UserError, match='only 2 CUDA device'):
        runtime.resolve_device('cuda:2')


@pytest.mark.parametrize('n', [1, 5, 8, 9, 33, 100, 255, 256, 257, 1000, 4097])
def test_a_batch_is_padded_to_a_bucket_at_most_a_quarter_larger(n):
    size = runtime.bucket_size(n)
    assert n <= size <= 1.25 * n
    assert runtime.bucket_size(size) == size  # every bucket is its own


def test_few_graphs_cover_every_batch_that_is_graphed():
    assert len({runtime.bucket_size(n) for n in range(1, runtime.CudaGraphs.max_batch + 1)}) <= 40


def test_inference_on_a_cpu_runs_large_batches_of_large_images_in_parts():
    sizes = []

    def fn(x):
        sizes.append(len(x))
        return x.flatten(1).sum(1, keepdim=True)
    chunked = runtime.fast_inference(fn, CPU)
    images = torch.randn(200, 3, 32, 32)
    assert torch.allclose(chunked(images), fn(images)) and sizes[:-1] == [64, 64, 64, 8]  # in order, as one call
    sizes.clear()
    chunked(torch.randn(200, 3, 16, 16)), chunked(torch.randn(300, 10))  # 4x fewer pixels each; not images
    assert sizes == [200, 300]


@needs_cuda
@pytest.mark.parametrize('arch', [TEACHER, *STUDENTS])
def test_cuda_graphs_give_the_eager_outputs_at_every_batch(arch):
    cuda = torch.device('cuda')
    model = runtime.place(build_model(arch, 10), cuda).eval()
    graphed = runtime.CudaGraphs(model)
    with torch.inference_mode(), torch.autocast('cuda', dtype=torch.bfloat16):
        for n in (1, 3, 37, 256, 37):  # 37 again: a replay of a graph already captured
            x = torch.randn(n, 3, 32, 32, device=cuda).contiguous(memory_format=torch.channels_last)
            out = graphed(x)
            assert out.shape == (n, 10)
            torch.testing.assert_close(out.float(), model(x).float(), atol=0.05, rtol=0.05)
        big = torch.randn(graphed.max_batch + 1, 3, 32, 32, device=cuda).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(graphed(big).float(), model(big).float(), atol=0.05, rtol=0.05)
    assert len(graphed.graphs) == 4 and all(graphed.graphs.values())  # the large batch ran eagerly


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=CUDA_MARKS)])
def test_read_later_reads_the_values_the_tensor_had_when_asked(device):
    x = torch.arange(6, device=device).view(2, 3)
    read = runtime.read_later(x)
    x.zero_()  # queued after the copy: the copy must not see it
    assert read() == [[0, 1, 2], [3, 4, 5]]


@needs_cuda
def test_a_model_graphs_cannot_hold_runs_eagerly():
    def syncing(x):
        return x * float(x.sum())  # a host sync: capture fails
    graphed = runtime.CudaGraphs(syncing)
    x = torch.ones(4, 3, device='cuda')
    torch.testing.assert_close(graphed(x), syncing(x))
    assert list(graphed.graphs.values()) == [None]


MEMINFO = ('MemTotal:        4000 kB\nMemFree:          300 kB\nMemAvailable:     1000 kB\nSwapFree:           24 kB\n'
           'HugePages_Total:       0\n')
FREE = (1000 + 24) * 1024


def _cgroup(folder, limit, used, stat='', v1=False):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ('memory.limit_in_bytes' if v1 else 'memory.max')).write_text(f'{limit}\n')
    (folder / ('memory.usage_in_bytes' if v1 else 'memory.current')).write_text(f'{used}\n')
    (folder / 'memory.stat').write_text(stat)


@pytest.mark.parametrize('own, layout, expected', [
    ('0::/\n', {'': ('max', 100000)}, FREE),  # no limit
    ('0::/\n', {'': (500000, 100000)}, 400000),  # a container with its own cgroup namespace
    # SLURM on a cgroup v2 host: the limit is on the job, the cgroup above the step's; page cache in use counts, its
    # inactive part does not
    ('0::/system.slice/job_7/step_0\n', {'system.slice/job_7': (600000, 300000, 'file 200000\ninactive_file 50000\n'),
                                         'system.slice/job_7/step_0': ('max', 200000)}, 350000),
    # cgroup v1 (Docker on an older host): 'no limit' is a number near 2**63, the limit sits on the process's cgroup
    ('5:cpu:/\n4:memory:/docker/abc\n', {
        'memory': (9223372036854771712, 1),
        'memory/docker/abc': (800000, 500000, 'total_cache 400000\ntotal_inactive_file 100000\n')}, 400000),
    # v1 without a cgroup namespace: the host's path is absent inside, and the mount is the container's cgroup
    ('4:memory:/docker/abc\n', {'memory': (700000, 200000)}, 500000),
])
def test_free_memory_is_what_linux_says_is_available_within_the_tightest_cgroup_limit(tmp_path, own, layout,
                                                                                      expected):
    meminfo, own_cgroups, cgroups = tmp_path / 'meminfo', tmp_path / 'cgroup', tmp_path / 'fs'
    meminfo.write_text(MEMINFO)
    own_cgroups.write_text(own)
    for folder, values in layout.items():
        _cgroup(cgroups / folder, *values, v1=folder.split('/')[0] == 'memory')
    assert runtime.free_memory(str(meminfo), str(cgroups), str(own_cgroups)) == expected
    assert runtime.free_memory(str(meminfo), str(cgroups), str(tmp_path / 'absent')) == FREE  # no cgroups
    assert runtime.free_memory(str(tmp_path / 'absent')) is None  # not Linux: no check


def test_images_that_would_crowd_the_gpu_stay_in_host_memory_said_once(monkeypatch, capsys):
    images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (2 * images.nbytes - 1, 10**9))
    for _ in range(2):  # every loader of the set asks
        assert runtime.place_data(images, 'cuda') is images  # not moved: no CUDA call made
    assert capsys.readouterr().err.count('do not fit in the GPU') == 1


def _stored_activation_bytes(model, image_size: int) -> int:
    """What a real float32 training pass on the CPU keeps for the backward pass, per image: distinct storages."""
    def held(batch):
        saved = {}

        def pack(tensor):
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(torch.randn(batch, 3, image_size, image_size))
        return sum(saved.values())
    return held(2) - held(1)


@pytest.mark.parametrize('arch', [TEACHER, *STUDENTS])
@pytest.mark.parametrize('image_size', [32, 64])
def test_the_training_memory_counted_on_the_meta_device_is_what_a_real_pass_keeps(arch, image_size):
    model = build_model(arch, 10, stem_stride=stem_stride_for(image_size)).train()
    counted = runtime.training_activation_bytes(model, image_size)
    assert counted == pytest.approx(_stored_activation_bytes(model, image_size), rel=0.1)
    assert counted < runtime.MAX_ACTIVATIONS_PER_INPUT_BYTE * 3 * image_size ** 2 * 4  # the cheap bound holds
    assert next(model.parameters()).device == CPU  # the model itself is not moved


@pytest.mark.parametrize('amp', [None, torch.bfloat16])
def test_a_training_batch_too_large_for_the_cpus_memory_is_one_line_naming_a_batch_that_fits(monkeypatch, amp):
    model = build_model('googlenet', 10)
    per_image = runtime.training_activation_bytes(model, 32) // (2 if amp else 1)
    monkeypatch.setattr(runtime, 'free_memory', lambda: 10 * per_image)
    runtime.check_training_fits(model, 32, 10, CPU, amp)
    with pytest.raises(UserError, match=r'a training batch of 11 images at 32 px holds at least .* of activations, '
                                        r'more than the .* of free memory, .*; pass --batch-size 7 or less, or a '
                                        r'smaller --image-size'):
        runtime.check_training_fits(model, 32, 11, CPU, amp)
    monkeypatch.setattr(runtime, 'free_memory', lambda: per_image)
    with pytest.raises(UserError, match=r'; pass a smaller --image-size'):
        runtime.check_training_fits(model, 32, 2, CPU, amp)


def test_the_memory_check_skips_its_meta_pass_where_the_batch_is_far_from_filling_memory(monkeypatch):
    monkeypatch.setattr(runtime, 'free_memory', lambda: 3 * runtime.MAX_ACTIVATIONS_PER_INPUT_BYTE * 3 * 32 * 32 * 4)
    monkeypatch.setattr(runtime, 'training_activation_bytes', lambda *args: pytest.fail('counted needlessly'))
    runtime.check_training_fits(build_model('googlenet', 10), 32, 2, CPU, None)
