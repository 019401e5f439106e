"""The training engine on toy tasks: resume equals uninterrupted, loss terms and second players
are applied, callbacks see every step, interrupted steps leave no trace."""

import numpy as np
import pytest
import torch

from skuld.engine import (
    Callback,
    Checkpointing,
    EngineConfig,
    LossTerm,
    Task,
    TrainingState,
    read_resumable,
    restore,
    train,
)

W_TRUE = torch.tensor([[2.0], [-1.0]])


class Regression(Task):
    """y = x W on batches drawn from each step's generator, through a BatchNorm (buffers)."""

    kind = "regression"

    def __init__(self, learning_rate=0.05, seen=None):
        super().__init__(learning_rate)
        self.seen = seen if seen is not None else []

    def batches(self, start, stop, device):
        yield from range(start, stop)

    def prepare(self, model, batch, step):
        self.seen.append(("prepare", step.index, torch.is_autocast_enabled("cpu")))
        x = torch.randn(8, 2, generator=step.generator)
        return x, x @ W_TRUE

    def loss(self, model, inputs, step):
        self.seen.append(("loss", step.index, torch.is_autocast_enabled("cpu")))
        x, y = inputs
        pred = model(x)
        return torch.nn.functional.mse_loss(pred.float(), y), {"half": 0.5 * pred.detach().float().mean()}, \
            {"prediction": pred}

    def stage(self, step):
        return "warm" if step < 3 else "main"

    def lr(self, step):
        return self.learning_rate * (0.5 if step >= 5 else 1.0)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 1))


def state_of(net):
    return TrainingState(net, torch.optim.Adam(net.parameters(), lr=0.05))


CPU = torch.device("cpu")


class Raise(Callback):
    """Ctrl-C at the end of one step (after it completed)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, step, last_losses):
        if step == self.at:
            raise KeyboardInterrupt


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    straight = state_of(model())
    train(Regression(), straight, 8, EngineConfig(device=CPU, seed=3))
    spec = Checkpointing(str(tmp_path / "run.pt"), every=100, kind="regression", fingerprint={"lr": 0.05}, seed=3)
    first = state_of(model())
    with pytest.raises(KeyboardInterrupt):
        train(Regression(), first, 8, EngineConfig(device=CPU, seed=3, checkpoint=spec), callbacks=[Raise(4)])
    assert first.step == 5
    resumed = state_of(model())
    restore(read_resumable(spec), resumed, Regression(), [])
    assert resumed.step == 5
    train(Regression(), resumed, 8, EngineConfig(device=CPU, seed=3, checkpoint=spec))
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["step"] for h in resumed.history] == list(range(8))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert [h["stage"] for h in resumed.history] == ["warm"] * 3 + ["main"] * 5
    assert [h["lr"] for h in resumed.history] == [0.05] * 5 + [0.025] * 3


def test_an_interruption_inside_a_step_leaves_the_last_completed_step(tmp_path, monkeypatch):
    """A failure after the forward pass (which moved the BatchNorm statistics): the model and
    its checkpoint are exactly those of the previous step."""
    spec = Checkpointing(str(tmp_path / "run.pt"), every=100, kind="regression", seed=0)
    reference = state_of(model())
    train(Regression(), reference, 3, EngineConfig(device=CPU))
    calls = []
    real = Regression.loss

    def failing(self, model, inputs, step):
        out = real(self, model, inputs, step)
        calls.append(step.index)
        if step.index == 3:
            raise RuntimeError("boom")
        return out

    monkeypatch.setattr(Regression, "loss", failing)
    broken = state_of(model())
    with pytest.raises(RuntimeError, match="boom"):
        train(Regression(), broken, 8, EngineConfig(device=CPU, checkpoint=spec))
    assert broken.step == 3 and calls == [0, 1, 2, 3]
    for (k, a), b in zip(reference.model.state_dict().items(), broken.model.state_dict().values()):
        assert torch.equal(a, b), k
    saved = read_resumable(spec)
    assert saved["step"] == 3 and len(saved["history"]) == 3
    for k, v in reference.model.state_dict().items():
        assert torch.equal(saved["model"][k], v), k


def test_prepare_runs_outside_autocast_and_the_loss_under_it():
    seen = []
    net = model()
    train(Regression(seen=seen), state_of(net), 2, EngineConfig(device=CPU, amp_dtype=torch.bfloat16))
    assert [s for s in seen if s[0] == "prepare"] == [("prepare", 0, False), ("prepare", 1, False)]
    assert [s for s in seen if s[0] == "loss"] == [("loss", 0, True), ("loss", 1, True)]


class WeightPenalty(LossTerm):
    name = "penalty"

    def __init__(self, model, weight):
        self.model, self.weight = model, weight

    def loss(self, outputs, step):
        assert not torch.is_autocast_enabled("cpu")  # terms are computed in float32
        return self.weight * self.model[1].weight.pow(2).sum()


def test_a_loss_term_is_added_to_the_loss_and_the_gradient():
    plain, with_term = model(), model()
    for net, terms in ((plain, []), (with_term, [WeightPenalty(with_term, 3.0)])):
        state = TrainingState(net, torch.optim.SGD(net.parameters(), lr=0.1))
        train(Regression(learning_rate=0.1), state, 1, EngineConfig(device=CPU), terms=terms)
        net.history = state.history
    w0 = model()[1].weight.detach()
    # One SGD step: the term's gradient 2 * 3 * w0 is taken on top of the task's.
    torch.testing.assert_close(with_term[1].weight.detach(), plain[1].weight.detach() - 0.1 * 6.0 * w0)
    record = with_term.history[0]
    assert record["penalty"] == pytest.approx(3.0 * float(w0.pow(2).sum()))
    assert record["loss"] == pytest.approx(plain.history[0]["loss"] + record["penalty"], rel=1e-6)
    assert "half" in record and record["stage"] == "warm"


class Critic(LossTerm):
    """A second player: a scalar it learns to push towards the model's mean prediction."""

    name = "critic"
    auxiliary_name = "critic_fit"

    def __init__(self):
        self.value = torch.nn.Parameter(torch.zeros(()))
        self.optimizer = torch.optim.SGD([self.value], lr=0.5)
        self._target = None
        self.steps = []

    def loss(self, outputs, step):
        self._target = outputs["prediction"].detach().float().mean()
        return None  # adds nothing to the model's loss

    def auxiliary_loss(self, step):
        self.steps.append(step.index)
        return (self.value - self._target) ** 2

    def state_dict(self):
        return {"value": self.value.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.value.copy_(state["value"])
        self.optimizer.load_state_dict(state["optimizer"])


def test_a_second_player_is_trained_by_the_engine_and_checkpointed(tmp_path):
    critic = Critic()
    state = state_of(model())
    spec = Checkpointing(str(tmp_path / "run.pt"), every=2, kind="regression", seed=0)
    train(Regression(), state, 4, EngineConfig(device=CPU, checkpoint=spec), terms=[critic])
    assert critic.steps == [0, 1, 2, 3] and float(critic.value.detach()) != 0
    assert all("critic_fit" in h and "critic" not in h for h in state.history)
    saved = read_resumable(spec)
    assert float(saved["terms"]["critic"]["value"]) == float(critic.value.detach())
    with pytest.raises(ValueError, match="loss terms"):
        restore(saved, state_of(model()), Regression(), [])


def test_an_interrupted_second_player_is_restored_to_the_last_completed_step():
    critic = Critic()
    state = state_of(model())
    train(Regression(), state, 2, EngineConfig(device=CPU), terms=[critic])
    before = float(critic.value.detach())

    def auxiliary_then_fail(step):
        loss = Critic.auxiliary_loss(critic, step)
        critic.optimizer.zero_grad()
        loss.backward()
        critic.optimizer.step()  # the second player moved ...
        raise KeyboardInterrupt  # ... and then the step was interrupted

    critic.auxiliary_loss = auxiliary_then_fail
    with pytest.raises(KeyboardInterrupt):
        train(Regression(), state, 4, EngineConfig(device=CPU), terms=[critic])
    assert state.step == 2 and float(critic.value.detach()) == before


class Recorder(Callback):
    def __init__(self, stop_at=None):
        self.begun, self.ended, self.stop_at = [], [], stop_at

    def on_step_begin(self, step):
        self.begun.append(step)

    def on_step_end(self, step, last_losses):
        self.ended.append((step, last_losses()["step"]))
        return step == self.stop_at


def test_callbacks_see_every_step_and_may_stop_the_run():
    every, stopper = Recorder(), Recorder(stop_at=2)
    state = state_of(model())
    train(Regression(), state, 6, EngineConfig(device=CPU), callbacks=[every, stopper])
    assert every.begun == [0, 1, 2] and every.ended == [(0, 0), (1, 1), (2, 2)]
    assert state.step == 3 and len(state.history) == 3
    train(Regression(), state, 6, EngineConfig(device=CPU), callbacks=[every])
    assert every.begun == [0, 1, 2, 3, 4, 5] and state.step == 6


def test_progress_lines_name_the_run_and_its_parts(capsys):
    train(Regression(), state_of(model()), 4, EngineConfig(device=CPU, verbose=1, report_every=2, name="toy"))
    err = capsys.readouterr().err
    assert "[skuld] toy step 2/4 [warm] loss" in err and "(half " in err and "toy step 4/4 [main]" in err


def test_the_step_generators_make_each_step_depend_on_the_seed_and_the_step_only():
    a, b, c = state_of(model()), state_of(model()), state_of(model())
    train(Regression(), a, 3, EngineConfig(device=CPU, seed=1))
    train(Regression(), b, 3, EngineConfig(device=CPU, seed=1))
    train(Regression(), c, 3, EngineConfig(device=CPU, seed=2))
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]
    np.testing.assert_array_equal(a.model[1].weight.detach(), b.model[1].weight.detach())
