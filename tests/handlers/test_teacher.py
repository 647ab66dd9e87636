from __future__ import annotations

import io
import logging

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from mtreg_monai.handlers import MeanTeacherHandler


def _run_recording(handler: MeanTeacherHandler, student: nn.Module, n: int, nonfinite_at: tuple[int, ...] = ()):
    """Run ``n`` iterations; return the momentum after each and the student's parameters after each step."""
    engine = _train_engine(student, nonfinite_at)
    handler.attach(engine)
    momenta, students = [], []

    @engine.on(Events.ITERATION_COMPLETED)
    def _record(e):  # registered after the teacher update
        momenta.append(e.state.ema_momentum)
        students.append([p.detach().clone() for p in student.parameters()])

    engine.run([torch.randn(4, 3) for _ in range(n)], max_epochs=1)
    return momenta, students


def _train_engine(model: nn.Module, nonfinite_at: tuple[int, ...] = ()) -> Engine:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(engine, batch):
        opt.zero_grad()
        model(batch).pow(2).mean().backward()
        opt.step()
        return {"nonfinite": engine.state.iteration in nonfinite_at}

    return Engine(step)


def test_teacher_is_ema_of_student():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    handler = MeanTeacherHandler(student, alpha=0.9)
    engine = _train_engine(student)
    handler.attach(engine)
    expected = [p.detach().clone() for p in student.parameters()]
    snapshots = []
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: snapshots.append([p.detach().clone() for p in student.parameters()])
    )
    data = [torch.randn(4, 3) for _ in range(5)]
    engine.run(data, max_epochs=1)
    # independent expectation: t_k = 0.9 t_{k-1} + 0.1 s_k, t_0 = s_0
    for snap in snapshots:
        expected = [0.9 * t + 0.1 * s for t, s in zip(expected, snap)]
    for t, e in zip(handler.teacher.parameters(), expected):
        torch.testing.assert_close(t, e)
    assert engine.state.ema_momentum == pytest.approx(0.1)
    assert handler.num_updates == 5


def test_warmup_first_update_copies_student():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    handler = MeanTeacherHandler(student, alpha=0.99, warmup=True)
    with torch.no_grad():
        for p in handler.teacher.parameters():
            p.add_(10.0)  # a teacher far from the student: the first update must forget it
    _run_recording(handler, student, 1)
    for t, s in zip(handler.teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s, rtol=0, atol=0)
    assert handler.num_updates == 1


def test_warmup_momentum_sequence():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    handler = MeanTeacherHandler(student, alpha=0.75, warmup=True)
    momenta, students = _run_recording(handler, student, 7)
    # momentum_k = max(1/(k+1), 1 - alpha): 1, 1/2, 1/3, 1/4 = 1 - alpha, then 1 - alpha
    assert momenta == pytest.approx([1.0, 1 / 2, 1 / 3, 0.25, 0.25, 0.25, 0.25])
    assert [handler.momentum_at(k) for k in (0, 1, 2, 99)] == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    # independent expectation: t_0 = s_0, t_k = (1 - m_k) t_{k-1} + m_k s_k with the analytic m_k
    expected = students[0]
    for m, snap in zip([1 / 2, 1 / 3, 1 / 4, 1 / 4, 1 / 4, 1 / 4], students[1:]):
        expected = [(1 - m) * t + m * s for t, s in zip(expected, snap)]
    for t, e in zip(handler.teacher.parameters(), expected):
        torch.testing.assert_close(t, e)


def test_warmup_ramp_is_running_average():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    handler = MeanTeacherHandler(student, alpha=0.75, warmup=True)
    _, students = _run_recording(handler, student, 4)  # momenta 1, 1/2, 1/3, 1/4: the mean of the 4 states
    for t, ps in zip(handler.teacher.parameters(), zip(*students)):
        torch.testing.assert_close(t, sum(ps) / 4)


def test_warmup_reaches_alpha():
    handler = MeanTeacherHandler(nn.Linear(2, 2), alpha=0.99, warmup=True)
    momenta = [handler.momentum_at(k) for k in range(150)]
    assert momenta[:3] == pytest.approx([1.0, 0.5, 1 / 3])
    assert all(m >= 1 - 0.99 for m in momenta) and momenta[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(momenta, momenta[1:]))
    assert momenta[98] == pytest.approx(1 / 99) and momenta[99] == 1 - 0.99  # the 100th update uses alpha
    assert MeanTeacherHandler(nn.Linear(2, 2), alpha=0.99).momentum_at(0) == pytest.approx(0.01)  # no warm-up


def test_warmup_skipped_iterations_do_not_count():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    handler = MeanTeacherHandler(student, alpha=0.9, warmup=True)
    momenta, _ = _run_recording(handler, student, 4, nonfinite_at=(2,))
    # iteration 2 skipped: the state keeps the last momentum, and iteration 3 is the second update
    assert momenta == pytest.approx([1.0, 1.0, 1 / 2, 1 / 3])
    assert handler.num_updates == 3


def test_teacher_gets_no_gradient():
    student = nn.Linear(3, 2)
    teacher = MeanTeacherHandler(student).teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    out = teacher(torch.randn(2, 3))
    assert not out.requires_grad


def test_skips_nonfinite_iterations():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    handler = MeanTeacherHandler(student, alpha=0.5)
    engine = _train_engine(student, nonfinite_at=(1, 2))
    handler.attach(engine)
    before = [p.clone() for p in handler.teacher.parameters()]
    engine.run([torch.randn(4, 3) for _ in range(2)], max_epochs=1)
    for a, b in zip(before, handler.teacher.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_state_dict_round_trip():
    student = nn.Linear(3, 2)
    h1 = MeanTeacherHandler(student)
    with torch.no_grad():
        for p in h1.teacher.parameters():
            p.add_(1.0)
    h2 = MeanTeacherHandler(student)
    h2.load_state_dict(h1.state_dict())
    for a, b in zip(h1.teacher.parameters(), h2.teacher.parameters()):
        torch.testing.assert_close(a, b)


def _through_bytes(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resume_restores_update_count():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    h1 = MeanTeacherHandler(student, alpha=0.75, warmup=True)
    _run_recording(h1, student, 2)
    saved = _through_bytes({"teacher": h1.state_dict()})
    assert saved["teacher"]["num_updates"] == 2
    h2 = MeanTeacherHandler(student, alpha=0.75, warmup=True)
    Checkpoint.load_objects({"teacher": h2}, saved)  # as CheckpointLoader does
    assert h2.num_updates == 2
    for a, b in zip(h1.teacher.parameters(), h2.teacher.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    momenta, _ = _run_recording(h2, student, 3)
    assert momenta == pytest.approx([1 / 3, 0.25, 0.25])  # the ramp continues, it does not restart at 1
    assert h2.num_updates == 5


@pytest.mark.parametrize("warmup", [False, True])
def test_loads_weights_only_state(warmup, caplog):
    # what earlier versions saved (the handler's or the teacher's state_dict: the weights alone)
    student = nn.Linear(3, 2)
    old = {k: v + 1.0 for k, v in student.state_dict().items()}
    handler = MeanTeacherHandler(student, alpha=0.75, warmup=warmup)
    with caplog.at_level(logging.WARNING, logger="mtreg_monai.handlers.teacher"):
        handler.load_state_dict(_through_bytes(old))
    for k, v in handler.teacher.state_dict().items():
        torch.testing.assert_close(v, old[k])
    assert handler.momentum_at(handler.num_updates) == pytest.approx(0.25)  # warm-up treated as done
    assert ("no update count" in caplog.text) == warmup
    momenta, _ = _run_recording(handler, student, 1)
    assert momenta == pytest.approx([0.25])


def test_ill_state_dict():
    handler = MeanTeacherHandler(nn.Linear(3, 2))
    weights = handler.teacher.state_dict()
    with pytest.raises(ValueError, match="num_updates"):
        handler.load_state_dict({"ema_model": weights, "num_updates": -1})
    with pytest.raises(ValueError, match="num_updates"):
        handler.load_state_dict({"ema_model": weights})
    with pytest.raises(TypeError, match="state_dict"):
        handler.load_state_dict([weights])
    handler.load_state_dict({"ema_model": weights, "num_updates": torch.tensor(4)})
    assert handler.num_updates == 4


def test_attach_once():
    student = nn.Linear(3, 2)
    handler = MeanTeacherHandler(student)
    engine = _train_engine(student)
    handler.attach(engine)
    handler.attach(engine)
    assert len(engine._event_handlers[Events.ITERATION_COMPLETED]) == 1


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, "0.9", True])
def test_ill_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        MeanTeacherHandler(nn.Linear(2, 2), alpha=alpha)


def test_ill_warmup():
    with pytest.raises(TypeError, match="warmup"):
        MeanTeacherHandler(nn.Linear(2, 2), warmup=1)
