"""Every command line users already have (the seed READMEs and check/) runs or fails in one line."""

import shlex

import pytest
import torch

import config
import main
from helpers import ROOT, cli, script_lines, train_one_batch

SEED_LINES = [shlex.split(line) for line in (ROOT / "tests" / "seed_lines.txt").read_text()
              .splitlines() if line.strip()]
CHECK_LINES = [argv for script in sorted((ROOT / "check").glob("*.sh"))
               for argv in script_lines(script)]
ALL = [words[2:] for words in SEED_LINES] + CHECK_LINES


@pytest.mark.parametrize("argv", ALL, ids=[" ".join(a)[:90] for a in ALL])
def test_line_builds_its_model_or_fails_in_one_line(argv, capsys):
    args, typed = main.parse(argv)
    if args.load_path:
        rc, _, err = cli(argv, capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1
        assert f"--load-path {args.load_path}: no such folder" in err
        return
    config.validate(args, typed)
    model = config.build_model(args)
    if config.MODELS[args.model] == "cnn":
        assert [syn.out_channels for syn in model.synapses[:len(args.channels)]] == args.channels
        assert [syn.pool for syn in model.synapses[:len(args.channels)]] == list(args.pools)
    if config.MODELS[args.model] == "lca":  # atoms, then the conv layers from their input on
        convs = model.synapses[1:len(args.channels) - 1]
        assert model.sparse_coding.weight.shape[:2] == (args.channels[0], 1)
        assert [syn.in_channels for syn in convs] == args.channels[1:-1]
        assert [syn.out_channels for syn in convs] == args.channels[2:]
        assert [syn.pool for syn in convs] == list(args.pools[1:])
    assert len(model.synapses) == len(args.lrs)
    assert model.has_feedback == args.model.startswith("VF")
    assert model.softmax == args.softmax and model.n_states == len(model.state_shapes)
    assert model.free_steps == args.T1
    x = torch.rand(2, *config.TASKS[args.task][0])
    with torch.no_grad():
        batch = model.batch(x, torch.tensor([1, 2]), args.betas[1])
        s = model.step(batch, model.init_states(x))
    assert [t.shape[1:] for t in model.visible(s)] == model.state_shapes
    assert model.logits(s).shape == (2, 10)


def test_published_cifar_architecture():
    args, typed = main.parse(next(a for a in CHECK_LINES
                                  if "--softmax" in a and "CIFAR10" in a and "CNN" in a))
    config.validate(args, typed)
    model = config.build_model(args)
    assert [tuple(s) for s in model.state_shapes] == [(128, 16, 16), (256, 8, 8), (512, 4, 4),
                                                      (512, 1, 1)]
    assert model.synapses[-1].in_features == 512 and model.num_classes == 10


def test_seed_lines_are_all_here():
    assert len(SEED_LINES) == 22 and any(w[1] == "main_dropout.py" for w in SEED_LINES)


VF_LINES = [words[2:] for words in SEED_LINES if "'VFCNN'" in words or "VFCNN" in words]


@pytest.mark.parametrize("argv", VF_LINES, ids=[" ".join(a[-14:]) for a in VF_LINES])
def test_published_vfcnn_lines_train_a_batch(argv):
    """The VFCNN lines' own architecture and update rule, on a CIFAR-shaped batch of 2 (with
    5 free and 4 nudged steps, enough to reach the 4 layers, so the CPU test stays short)."""
    args, model, _, _, _ = train_one_batch(argv + ["--T1", "5", "--T2", "4"], (3, 32, 32))
    feedback = [syn for syn in model.synapses if syn.feedback is not None]
    assert len(feedback) == 3  # conv 2-4; not the first conv, not the softmax read-out
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    for syn in feedback:
        assert syn.feedback.grad.abs().sum() > 0
        assert torch.equal(syn.weight.grad, syn.feedback.grad) == args.same_update


LCA_LINES = [argv for argv in CHECK_LINES if "EPLCACNN" in argv]


@pytest.mark.parametrize("argv", LCA_LINES, ids=[" ".join(a[-8:]) for a in LCA_LINES])
def test_seed_lcanet_lines_train_every_layer(argv):
    """The seed's LCANet lines (and their --dict_loss variants) as written, on an MNIST-shaped
    batch of 2: every weight the line trains gets a gradient, the dictionary too unless
    --dict_loss recon, and its atoms stay unit after the step. (With tau 200 the code needs
    the lines' own steps to leave zero, so nothing is shortened.)"""
    args, model, trainer, data, s = train_one_batch(argv, (1, 28, 28))
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    D = model.sparse_coding.weight
    assert (D in set(model.parameters())) == (args.dict_loss != "recon")
    before = D.detach().clone()
    trainer.optimizer.step()
    model.after_update(data.x, s)
    assert not torch.equal(before, D)
    torch.testing.assert_close(D.flatten(1).norm(dim=1), torch.ones(32))
