"""distill/routing/experts.py: experts rebuilt from checkpoints, checked to belong together, timed on this device."""
import shutil

import pytest
import torch

from distill import UserError
from distill.checkpoint import save_checkpoint
from distill.routing.decisions import SELECTOR_INPUTS
from distill.routing.experts import (check_cost_device, check_routable, cost_vector, load_experts, load_selector,
                                     measure_costs, selector_experts, teacher_of)
from distill.runtime import device_name


def test_experts_are_timed_on_this_device_and_refuse_a_student_of_other_data(tiny_runs, tmp_path):
    work, _ = tiny_runs
    paths = [str(work / 'checkpoints' / arch / 'best.pt') for arch in ('densenet121', 'googlenet')]
    experts = load_experts(paths, 'cpu')
    assert [e.name for e in experts] == ['densenet121', 'googlenet']
    assert all(e.macs > 0 and e.cost == {'macs': e.macs} for e in experts)  # no time until measured
    size = experts[0].state['image_size']
    measure_costs(experts, torch.zeros(8, 3, size, size).contiguous(memory_format=torch.channels_last))
    assert {e.cost['device'] for e in experts} == {device_name(torch.device('cpu'))}
    assert {e.cost['precision'] for e in experts} == {'float32'}  # timed without autocast
    assert cost_vector([e.cost for e in experts], 'time').tolist() == [e.cost['seconds_per_image'] for e in experts]
    assert cost_vector([e.cost for e in experts], 'macs').tolist() == [e.macs for e in experts]
    state = torch.load(paths[1], weights_only=True)
    save_checkpoint({**state, 'mean': [0.1, 0.2, 0.3]}, str(tmp_path / 'other.pt'))
    with pytest.raises(UserError, match='normalises images differently'):
        load_experts([paths[0], str(tmp_path / 'other.pt')], 'cpu')
    rounded = [s * (1 + 1e-15) for s in state['std']]  # the same pixels summed in another order
    save_checkpoint({**state, 'std': rounded}, str(tmp_path / 'rounded.pt'))
    load_experts([paths[0], str(tmp_path / 'rounded.pt')], 'cpu')
    with pytest.raises(UserError, match="unknown cost 'flops'"):
        cost_vector([e.cost for e in experts], 'flops')


def test_a_cost_timed_elsewhere_is_refused_one_timed_here_accepted_and_macs_never_need_a_device():
    with pytest.raises(UserError, match='timed on NVIDIA H100 80GB HBM3, not on this device'):
        check_cost_device([{'device': 'NVIDIA H100 80GB HBM3'}], 'time', torch.device('cpu'), 'sel.pt')
    check_cost_device([{'device': device_name(torch.device('cpu'))}], 'time', torch.device('cpu'), 'sel.pt')
    with pytest.raises(UserError, match=r'timed on CPU \(x86_64, 2 threads\), not on this device'):  # before the model
        check_cost_device([{'device': 'CPU (x86_64, 2 threads)'}], 'time', torch.device('cpu'), 'sel.pt')
    check_cost_device([{'device': 'another machine'}], 'macs', torch.device('cpu'), 'sel.pt')


def test_a_cost_timed_at_another_precision_is_refused_with_the_flags_that_fix_it():
    here = device_name(torch.device('cpu'))
    with pytest.raises(UserError, match=r"timed in bfloat16, not in float32 as here; pass --cost measure to time "
                                        r"them at this precision, or --amp bf16$"):
        check_cost_device([{'device': here, 'precision': 'bfloat16'}], 'time', torch.device('cpu'), 'sel.pt')
    check_cost_device([{'device': here, 'precision': 'bfloat16'}], 'time', torch.device('cpu'), 'sel.pt',
                      torch.bfloat16)
    check_cost_device([{'device': here}], 'time', torch.device('cpu'), 'sel.pt', torch.bfloat16)  # stored before it
    check_cost_device([{'device': here, 'precision': 'bfloat16'}], 'macs', torch.device('cpu'), 'sel.pt')


def test_a_teacher_fallback_needs_a_teacher_the_experts_name():
    class E:
        def __init__(self, teacher, path):
            self.state, self.path = {'teacher': teacher, 'config': {}}, path
    with pytest.raises(UserError, match='trained without a teacher'):
        teacher_of([E('t/best.pt', 'a/best.pt'), E(None, 'b/best.pt')])
    with pytest.raises(UserError, match='different teachers'):
        teacher_of([E('t/best.pt', 'a/best.pt'), E('u/best.pt', 'b/best.pt')])
    assert teacher_of([E('t/best.pt', 'a/best.pt'), E('t/best.pt', 'b/best.pt')]) == 't/best.pt'


def test_routing_needs_two_different_experts_of_different_names(tmp_path):
    class E:
        def __init__(self, path):
            self.path, self.name = str(path), path.parent.name
    for run in ('gn', 'other/gn'):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / 'best.pt').touch()
    (tmp_path / 'link').symlink_to(tmp_path / 'gn')
    with pytest.raises(UserError, match="routing needs two or more experts, got only '.*gn/best.pt'"):
        check_routable([E(tmp_path / 'gn' / 'best.pt')])
    with pytest.raises(UserError, match=r"'.*link/best.pt' is given twice as an expert \(as '.*gn/best.pt' too\)"):
        check_routable([E(tmp_path / 'gn' / 'best.pt'), E(tmp_path / 'link' / 'best.pt')])
    with pytest.raises(UserError, match=r"'.*/gn/best.pt' and '.*other/gn/best.pt' are both named 'gn' .* gn-2"):
        check_routable([E(tmp_path / 'gn' / 'best.pt'), E(tmp_path / 'other' / 'gn' / 'best.pt')])
    check_routable([E(tmp_path / 'gn' / 'best.pt'), E(tmp_path / 'teacher' / 'best.pt')])


def test_a_selector_trained_on_other_inputs_or_its_last_pt_is_refused_in_one_line(tmp_path):
    old = {'arch': 'selector', 'experts': [], 'routing': {'mode': 'cascade'}, 'model': {}}  # read features
    save_checkpoint(old, str(tmp_path / 'old.pt'))
    with pytest.raises(UserError, match='older version of selectorTrain.py; retrain the selector'):
        load_selector(str(tmp_path / 'old.pt'))
    save_checkpoint({**old, 'selector_inputs': SELECTOR_INPUTS}, str(tmp_path / 'new.pt'))
    assert load_selector(str(tmp_path / 'new.pt'))['selector_inputs'] == SELECTOR_INPUTS
    last = {key: value for key, value in old.items() if key != 'routing'}  # routing goes into best.pt only
    save_checkpoint({**last, 'selector_inputs': SELECTOR_INPUTS, 'optimizer': {}}, str(tmp_path / 'last.pt'))
    with pytest.raises(UserError, match="last.pt' is the selector's training state, for --resume; pass the best.pt"):
        load_selector(str(tmp_path / 'last.pt'))


def test_a_selector_refuses_an_expert_retrained_since_it_was_tuned(tiny_runs, tmp_path):
    work, _ = tiny_runs
    shutil.copytree(work / 'checkpoints', tmp_path / 'checkpoints', ignore=shutil.ignore_patterns('logit-cache'))
    selector = str(tmp_path / 'checkpoints' / 'selector' / 'best.pt')
    state = load_selector(selector)
    assert [e.name for e in selector_experts(state, selector, 'cpu')] == [e['name'] for e in state['experts']]
    student = tmp_path / 'checkpoints' / 'googlenet' / 'best.pt'
    retrained = torch.load(student, weights_only=True)
    retrained['model'] = {k: v + 1 if v.is_floating_point() else v for k, v in retrained['model'].items()}
    save_checkpoint(retrained, str(student))  # same path, same settings, other weights
    with pytest.raises(UserError, match=r"'.*googlenet/best.pt' has changed since selector '.*' was tuned on it"):
        selector_experts(load_selector(selector), selector, 'cpu')
    for expert in state['experts']:
        del expert['weights']  # a selector written before the digest is not checked
    assert len(selector_experts(state, selector, 'cpu')) == len(state['experts'])
