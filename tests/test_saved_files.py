"""Files a run is pointed at with --load-path: damaged ones end in one line; folders written by
the published code load (weights, epoch, optimizer and schedule) for evaluate, gducheck and
resume, and their pickled model.pt is never unpickled."""

import shutil

import pytest
import torch

import main
import results
from data_utils import load_task
from helpers import TINY_MLP, cli, only_run_dir
from trainer import Trainer, evaluate_split

ARCH = ["--model", "VFMLP", "--archi", "784", "32", "16", "10"]
PUBLISHED_TRAIN = ARCH + ["--optim", "sgd", "--mmt", "0.9", "--lrs", "0.05", "0.04", "0.03",
                          "--lr-decay", "--T1", "5", "--T2", "2", "--mbs", "200"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    argv = TINY_MLP + ["--epochs", "1", "--save", "--results-dir", root]
    assert cli(argv)[0] == 0
    return only_run_dir(root)


def edit_checkpoint(name="checkpoint.tar", **changes):
    def edit(run):
        ckpt = torch.load(run / name, weights_only=True)
        for key, value in changes.items():
            value = value(ckpt) if callable(value) else value
            if value is DROP:
                del ckpt[key]
            else:
                ckpt[key] = value
        torch.save(ckpt, run / name)
    return edit


def replace_file(name, obj):
    def replace(run):
        if isinstance(obj, bytes):
            (run / name).write_bytes(obj)
        else:
            torch.save(obj, run / name)
    return replace


DROP = object()
WIDER = {"synapses.0.weight": torch.zeros(64, 784), "synapses.0.bias": torch.zeros(64),
         "synapses.1.weight": torch.zeros(10, 64), "synapses.1.bias": torch.zeros(10)}


def nan_weights(ckpt):
    model = dict(ckpt["model"])
    model["synapses.0.bias"] = model["synapses.0.bias"].clone().fill_(float("nan"))
    return model


def shrunk_buffer(ckpt):
    opt = ckpt["optimizer"]
    state = {k: {**v, "momentum_buffer": v["momentum_buffer"][:1]} for k, v in
             opt["state"].items()}
    return {**opt, "state": state}


BAD_FILES = [  # (what is done to the good run, --todo, words the one-line message must hold)
    (replace_file("checkpoint.tar", torch.zeros(3)), "train", "holds a Tensor, not a checkpoint"),
    (replace_file("checkpoint.tar", [1, 2]), "train", "holds a list, not a checkpoint"),
    (replace_file("checkpoint.tar", b"\x00garbage"), "train", "corrupt or unreadable"),
    (replace_file("checkpoint.tar", b""), "evaluate", "corrupt or unreadable"),
    (edit_checkpoint(args=DROP), "train", "has no saved args"),
    (edit_checkpoint(args=[1]), "evaluate", "has no saved args"),
    (edit_checkpoint(model=DROP), "train", "has no saved weights"),
    (edit_checkpoint(model=WIDER), "train", "holds another architecture"),
    (edit_checkpoint(model=nan_weights), "train", "non-finite or non-float weights"),
    (edit_checkpoint(epoch=-1), "train", "its epoch and history is damaged"),
    (edit_checkpoint(epoch="1"), "train", "its epoch and history is damaged"),
    (edit_checkpoint(epoch=5), "train", "its epoch and history is damaged"),
    (edit_checkpoint(history={"epoch": []}), "train", "its epoch and history is damaged"),
    (edit_checkpoint(best_acc="high"), "train", "its epoch and history is damaged"),
    (edit_checkpoint(gen=torch.zeros(3, dtype=torch.uint8)), "train",
     "its data generator state is damaged"),
    (edit_checkpoint(gen=DROP), "train", "its data generator state is damaged"),
    (edit_checkpoint(cursor={"perm": torch.arange(7), "seen": 0}), "train",
     "its position inside the epoch is damaged"),
    (edit_checkpoint(cursor={"perm": torch.zeros(4000, dtype=torch.long), "seen": 0}), "train",
     "its position inside the epoch is damaged"),
    (edit_checkpoint(cursor={"perm": torch.randperm(4000), "seen": 4001}), "train",
     "its position inside the epoch is damaged"),
    (edit_checkpoint(cursor={"perm": torch.randperm(4000), "bogus": 1}), "train",
     "its position inside the epoch is damaged"),
    (edit_checkpoint(optimizer=shrunk_buffer), "train", "its optimizer state is damaged"),
    (edit_checkpoint(optimizer=lambda c: {**c["optimizer"], "param_groups": []}), "train",
     "its optimizer state is damaged"),
    (edit_checkpoint(optimizer=DROP), "train", "its optimizer state is damaged"),
    (edit_checkpoint(history=lambda c: {**c["history"], "epoch": None}), "train",
     "its epoch and history is damaged"),
    (edit_checkpoint(args=lambda c: {**c["args"], "T1": "x"}), "train",
     "the saved --T1 'x' is damaged (not an integer)"),
    (edit_checkpoint(args=lambda c: {**c["args"], "archi": "abc"}), "evaluate",
     "the saved --archi 'abc' is damaged (not a list of integers)"),
    (edit_checkpoint(args=lambda c: {**c["args"], "T2": None}), "gducheck",
     "the saved --T2 None is damaged"),
    (edit_checkpoint(args=lambda c: {**c["args"], "softmax": "yes"}), "train",
     "the saved --softmax 'yes' is damaged (not true or false)"),
    (edit_checkpoint(args=lambda c: {**c["args"], "lrs": [-1.0, 0.1]}), "train",
     "(--lrs saved in the --load-path run's checkpoint)"),
    (lambda run: (run / "model.pt").unlink(), "evaluate", "no model.pt there"),
    (replace_file("model.pt", torch.ones(2)), "evaluate", "model.pt holds no weights"),
    (edit_checkpoint("model.pt", model=WIDER, args=lambda c: {**c["args"],
                                                              "archi": [784, 64, 10]}),
     "evaluate", "the flags --archi differ from the saved run's"),
    (edit_checkpoint("model.pt", model=WIDER, args=DROP), "gducheck",
     "holds another architecture"),
    (lambda run: torch.save(torch.nn.Linear(2, 2), run / "model.pt"), "evaluate",
     "model.pt is corrupt or unreadable"),
]


@pytest.mark.parametrize("damage,todo,words", BAD_FILES,
                         ids=[f"{i}-{w[:30]}" for i, (_, _, w) in enumerate(BAD_FILES)])
def test_a_damaged_file_ends_in_one_line(damage, todo, words, good_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    damage(run)
    capsys.readouterr()
    rc, out, err = cli(["--todo", todo, "--load-path", run, "--mbs", "10"], capsys)
    assert rc == 2, out + err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert words in err and (f"--load-path {run}" in err or "the --load-path run's" in err)


def published_folder(path, model):
    """A results folder as the published code writes it: checkpoint.tar (weights under its
    names, VFMLP's B as layers from above, one optimizer group per synapse then per B, the
    cosine schedule) and a pickled model.pt."""
    path.mkdir()
    syn = model.synapses
    weights = {}
    for k, s in enumerate(syn):
        weights[f"synapses.{k}.weight"], weights[f"synapses.{k}.bias"] = s.weight, s.bias
    b_layers = [s.feedback.detach().t().clone() for s in syn if s.feedback is not None]
    weights.update({f"B_syn.{j}.weight": b for j, b in enumerate(b_layers)})
    params = [torch.nn.Parameter(w.detach().clone()) for w in weights.values()]
    groups = [{"params": params[2 * k:2 * k + 2], "lr": lr} for k, lr in enumerate([.05, .04, .03])]
    groups += [{"params": [params[6 + j]], "lr": lr} for j, lr in enumerate([.04, .03])]
    opt = torch.optim.SGD(groups, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 100, eta_min=1e-5)
    for _ in range(2):  # two epochs
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
    torch.save({"model_state_dict": {k: p.detach() for k, p in zip(weights, params)},
                "opt": opt.state_dict(), "train_acc": [10.0, 50.0, 60.0],
                "test_acc": [10.0, 55.0, 65.0], "best": 650, "epoch": 2, "angles": [],
                "scheduler": sched.state_dict()}, path / "checkpoint.tar")
    torch.save(model, path / "model.pt")  # a pickle: loading it would run code
    return params, opt


def test_a_published_results_folder_loads(tmp_path, capsys):
    args, typed = main.parse(PUBLISHED_TRAIN)
    main.config.validate(args, typed)
    torch.manual_seed(5)
    source = main.config.build_model(args)
    params, opt = published_folder(tmp_path / "pub", source)
    run = tmp_path / "pub"
    ckpt = results.load_run(str(run), "VFMLP")
    model = main.config.build_model(args)
    train, test = load_task("MNIST5K", "", torch.device("cpu"))
    trainer = Trainer(model, train, test, args, run)
    trainer.load_state_dict(ckpt)
    assert trainer.epoch == 2 and trainer.history["test_acc"] == [55.0, 65.0]
    b_pub = params[6]
    torch.testing.assert_close(model.synapses[1].feedback, b_pub.detach().t(), rtol=0, atol=0)
    torch.testing.assert_close(model.synapses[2].weight, params[4].detach(), rtol=0, atol=0)
    own_buffer = trainer.optimizer.state[model.synapses[1].feedback]["momentum_buffer"]
    torch.testing.assert_close(own_buffer, opt.state[b_pub]["momentum_buffer"].t(), rtol=0,
                               atol=0)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [
        g["lr"] for g in opt.param_groups[:3]]
    assert trainer.scheduler.last_epoch == 2
    expected = evaluate_split(model, test, "EP", 5)["acc"]

    capsys.readouterr()
    rc, out, _ = cli(ARCH + ["--todo", "evaluate", "--T1", "5", "--load-path", run], capsys)
    assert rc == 0 and f"test accuracy {expected:.2f}%" in out
    assert cli(ARCH + ["--todo", "gducheck", "--T1", "5", "--T2", "2", "--mbs", "4",
                       "--load-path", run], capsys)[0] == 0
    rc, _, err = cli(["--todo", "evaluate", "--load-path", run], capsys)  # no architecture
    assert rc == 2 and "holds another architecture" in err and len(err.splitlines()) == 1
    assert cli(PUBLISHED_TRAIN + ["--todo", "train", "--epochs", "1", "--save",
                                  "--load-path", run], capsys)[0] == 0
    ours = torch.load(run / "checkpoint.tar", weights_only=True)
    assert ours["epoch"] == 3 and ours["history"]["test_acc"][:2] == [55.0, 65.0]


def test_published_checkpoints_with_foreign_names_are_refused(tmp_path, capsys):
    (tmp_path / "pub").mkdir()
    torch.save({"model_state_dict": {"fc.weight": torch.zeros(2, 2)}, "epoch": 1},
               tmp_path / "pub" / "checkpoint.tar")
    rc, _, err = cli(["--todo", "evaluate", "--load-path", tmp_path / "pub"], capsys)
    assert rc == 2 and "unknown weight 'fc.weight'" in err and len(err.splitlines()) == 1
