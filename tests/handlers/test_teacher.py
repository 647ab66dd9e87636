from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from mtreg_monai.handlers import MeanTeacherHandler


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
