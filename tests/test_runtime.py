"""distill/runtime.py: devices, precision."""
import pytest
import torch

import distill.runtime as runtime
from distill import UserError

CPU = torch.device('cpu')


@pytest.mark.parametrize('native', [True, False])
def test_auto_precision_on_cpu_is_bf16_only_where_the_cpu_has_it_natively(monkeypatch, native):
    monkeypatch.setattr(runtime, 'cpu_has_native_bf16', lambda: native)
    assert runtime.amp_dtype('auto', CPU) == (torch.bfloat16 if native else None)
    assert runtime.amp_dtype('bf16', CPU) == torch.bfloat16 and runtime.amp_dtype('off', CPU) is None


def test_fp16_on_cpu_is_refused():
    with pytest.raises(UserError, match='--amp fp16 needs CUDA'):
        runtime.amp_dtype('fp16', CPU)


@pytest.mark.parametrize('name, message', [('gpu7', "unknown --device 'gpu7'"), ('meta', 'not supported'),
                                           ('cuda:1', 'no CUDA device is visible')])
def test_a_device_this_machine_cannot_use_is_one_clear_error(name, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(UserError, match=message):
        runtime.resolve_device(name)


def test_any_torch_device_string_is_accepted(monkeypatch):
    assert runtime.resolve_device('cpu') == CPU and runtime.resolve_device('auto').type in ('cpu', 'cuda')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert runtime.resolve_device('cuda:1') == torch.device('cuda', 1)
    with pytest.raises(UserError, match='only 2 CUDA device'):
        runtime.resolve_device('cuda:2')
