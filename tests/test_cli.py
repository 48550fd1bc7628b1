"""Bad input: one line naming the flag and the fix, exit code 2. --help lists every flag."""

import subprocess
import sys

import pytest
import torch

import main
from helpers import ROOT, TINY_MLP, cli

CNN = ["--model", "CNN"]
LCA = ["--model", "LCACNN"]
BAD_INPUTS = [
    (["--model", "RNN"], "--model 'RNN' is unknown"),
    (["--task", "SVHN"], "--task 'SVHN' is unknown"),
    (["--act", "relu"], "--act 'relu' is unknown"),
    (["--loss", "hinge"], "--loss 'hinge' is unknown"),
    (["--alg", "FA"], "--alg 'FA' is unknown"),
    (["--optim", "rmsprop"], "--optim 'rmsprop' is unknown"),
    (CNN + ["--pools", "mx"], "--pools 'x' is unknown"),
    (["--lrs", "0.1"], "--lrs has 1 entries but the model has 2 layers"),
    (["--wds", "1e-4", "1e-4", "1e-4"], "--wds has 3 entries but the model has 2 layers"),
    (CNN + ["--kernels", "5"], "--kernels has 1 entries but --channels has 2"),
    (CNN + ["--strides", "1", "1", "1"], "--strides has 3 entries but --channels has 2"),
    (CNN + ["--paddings", "1"], "--paddings has 1 entries but --channels has 2"),
    (CNN + ["--pools", "mmm"], "--pools has 3 entries but --channels has 2"),
    (CNN + ["--fc", "512", "7"], "--fc ends with 7 but --task MNIST5K has 10 classes"),
    (CNN + ["--fc", "10", "--lrs", "0.1", "0.1"], "--lrs has 2 entries but the model has 3"),
    (["--archi", "784", "512", "7"], "--archi ends with 7"),
    (["--archi", "100", "10"], "--archi starts with 100"),
    (CNN + ["--channels", "8", "8", "8", "8", "8"], "conv layer 3 shrinks the 28x28 input below 1"),
    (["--alg", "BPTT", "--thirdphase"], "--thirdphase only applies with --alg EP"),
    (["--alg", "BP", "--random-sign"], "--random-sign only applies with --alg EP"),
    (["--alg", "BPTT", "--T1", "5", "--T2", "10"], "--T2 10 > --T1 5"),
    (["--betas", "0.1", "0.1"], "--betas: beta1 and beta2 must differ"),
    (["--softmax"], "--softmax needs --loss cel"),
    (["--channels", "32"], "--channels does not apply to --model MLP"),
    (CNN + ["--archi", "784", "10"], "--archi does not apply to --model CNN"),
    (["--eps", "0.1"], "--eps only applies with --todo attack"),
    (["--lca_lambda", "0.2"], "--lca_lambda only applies with --model LCACNN"),
    (["--n_feats", "32"], "--n_feats only applies with --model LCACNN"),
    (CNN + ["--lca_signed"], "--lca_signed only applies with --model LCACNN"),
    (LCA + ["--archi", "784", "10"], "--archi does not apply to --model LCACNN"),
    (LCA + ["--dict_loss", "other"], "--dict_loss 'other' is unknown; choose one of recon, class"),
    (LCA + ["--dict_loss", "class", "--eta", "0.1"], "--eta 0.1: with --dict_loss class only"),
    (LCA + ["--channels", "32"], "--channels 32: LCANet reads the number of atoms, then"),
    (LCA + ["--channels", "32", "16", "64"], "the second entry must be 32 too"),
    (LCA + ["--kernels", "5"], "--kernels has 1 entries but --channels 32 32 64 gives 2 layers"),
    (LCA + ["--strides", "1", "1", "1", "1"], "--strides has 4 entries but --channels 32 32 64"),
    (LCA + ["--paddings", "0"], "--paddings has 1 entries but --channels 32 32 64 gives 2"),
    (LCA + ["--pools", "mm"], "--pools mm: the first letter is the LCA layer's"),
    (LCA + ["--channels", "8", "8", "16", "--n_feats", "16"], "--n_feats 16 disagrees with"),
    (LCA + ["--lca_stride", "2", "--strides", "1", "1"], "--lca_stride 2 disagrees with --strides"),
    (LCA + ["--lrs", "0.1", "0.1"], "--lrs has 2 entries but the model has 3 layers"),
    (LCA + ["--tau", "0.5"], "--tau 0.5: the LCA time constant counts iterations"),
    (LCA + ["--lca_iters", "0"], "--lca_iters 0: give 1 to 100,000 LCA iterations"),
    (LCA + ["--lca_lambda", "-1"], "--lca_lambda -1: the threshold must be 0 or more"),
    (LCA + ["--lca_feedback", "0"], "--lca_feedback 0: the top-down scale must be in (0, 100]"),
    (LCA + ["--n_feats", "0"], "--n_feats 0: a number of atoms must be at least 1"),
    (["--todo", "attack"], "--todo attack needs --load-path DIR"),
    (["--attack", "pgd"], "--attack only applies with --todo attack or --todo characteristic;"),
    (["--adv-fraction", "0.5"], "--adv-fraction only applies with --todo advtrain"),
    (["--todo", "advtrain", "--attack-step", "5"], "--attack-step only applies with --todo attack"),
    (["--todo", "advtrain", "--attack", "pgd"], "--attack only applies with --todo attack"),
    (["--todo", "attack", "--train-attack-step", "5"], "--train-attack-step only applies with"),
    (["--todo", "advtrain", "--attack-norm", "l1"], "--attack-norm 'l1' is unknown; choose one of"),
    (["--todo", "advtrain", "--eps", "0.1", "0.2"], "--eps: --todo advtrain trains at one radius"),
    (["--todo", "advtrain", "--attack-norm", "2", "inf"], "--attack-norm: --todo advtrain trains"),
    (["--todo", "advtrain", "--eps", "-0.1"], "--eps -0.1: a perturbation radius is 0 or more"),
    (["--todo", "advtrain", "--eps", "2"], "--eps 2: pixels lie in [0, 1]"),
    (["--todo", "advtrain", "--adv-fraction", "0"], "--adv-fraction 0: the adversarial share"),
    (["--todo", "advtrain", "--adv-fraction", "1.5"], "--adv-fraction 1.5: the adversarial share"),
    (["--todo", "advtrain", "--train-attack-step", "0"], "--train-attack-step 0: give 1 to"),
    (["--todo", "advtrain", "--attack-images", "0"], "--attack-images 0: give 1 or more"),
    (["--todo", "advtrain", "--hsj-iter", "5"], "--hsj-iter only applies with --todo attack"),
    (["--hsj-evals", "0"], "--hsj-evals 0: give 1 to 10,000,000 queries"),
    (["--dropouts", "1", "1", "1"], "--dropouts has 3 entries but the model has 2 layers"),
    (["--dropouts", "0", "1"], "--dropouts 0: a keep probability is in (0, 1]"),
    (["--dropouts", "1", "1.2"], "--dropouts 1.2: a keep probability is in (0, 1]"),
    (["--todo", "gducheck", "--dropouts", "1", "1"], "--dropouts only applies while training"),
    (["--same-update"], "--same-update only applies to --model VFMLP or VFCNN with --alg EP"),
    (["--model", "VFMLP", "--alg", "BPTT", "--same-update"], "--same-update only applies"),
    (["--model", "VFCNN", "--alg", "BP"], "--alg BP: a feed-forward pass never uses the feedback"),
    (["--check-thm", "--alg", "BPTT"], "--check-thm checks EP while it trains"),
    (["--check-thm", "--betas", "0.1", "0.2"], "the GDU check starts from the free fixed point"),
    (["--todo", "gducheck", "--betas", "0.5", "0.1"], "give --betas 0 0.1"),
    (["--todo", "gducheck", "--T2", "0"], "--T2 0: the GDU check compares the T2 nudged steps"),
    (["--todo", "gducheck", "--T1", "5", "--T2", "10"], "--T2 10 > --T1 5"),
    (["--check-thm", "--T1", "5", "--T2", "10"], "--T2 10 > --T1 5"),
    (["--check-thm", "--T2", "0"], "--T2 0: the GDU check compares the T2 nudged steps"),
    (["--model", "VFMLP", "--lrs", "0.1"], "--lrs has 1 entries but the model has 2 layers"),
    (["--T1", "abc"], "argument --T1: invalid int value: 'abc'"),
    (["--mbs", "0"], "--mbs must be at least 1"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--lr_decay"], "unrecognized arguments: --lr_decay; did you mean --lr-decay?"),
    (["--todo", "gducheck", "--mbs", "4001"], "--mbs 4001: the check takes --mbs training samples"),
    (["--todo", "evaluate"], "--todo evaluate needs --load-path"),
    (CNN + ["--task", "CIFAR10", "--data-dir", "{tmp}"],
     "--task CIFAR10: cannot load it from --data-dir"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_one_line_exit_2(argv, message, capsys, tmp_path):
    rc, _, err = cli([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err


def test_bad_load_paths(tmp_path, capsys):
    rc, _, err = cli(["--load-path", tmp_path / "missing"], capsys)
    assert rc == 2 and "no such folder" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = cli(["--todo", "evaluate", "--load-path", tmp_path / "empty"], capsys)
    assert rc == 2 and "no checkpoint.tar in that folder" in err
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "checkpoint.tar").write_bytes(b"not a checkpoint")
    rc, _, err = cli(["--load-path", tmp_path / "corrupt"], capsys)
    assert rc == 2 and "checkpoint.tar is corrupt or unreadable" in err
    assert len(err.strip().splitlines()) == 1


def test_unwritable_results_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc, _, err = cli(TINY_MLP + ["--save", "--results-dir", blocker], capsys)
    assert rc == 2 and "--results-dir" in err and len(err.strip().splitlines()) == 1


def test_saved_architecture_wins_on_resume(tmp_path, capsys):
    assert cli(TINY_MLP + ["--epochs", "1", "--save", "--results-dir", tmp_path])[0] == 0
    run = next(p for p in tmp_path.glob("*/*/*/*"))
    capsys.readouterr()
    rc, out, _ = cli(["--todo", "evaluate", "--load-path", run, "--archi", "784", "64", "10",
                      "--T1", "7"], capsys)
    assert rc == 0
    assert "--archi ignored" in out and "T1 7" in out


def test_device_falls_back_to_cpu_with_a_notice(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main.pick_device(0) == torch.device("cpu")
    assert "--device 0" in capsys.readouterr().out


SPEC_FLAGS = """--model --task --data-aug --lr-decay --scale --archi --channels --kernels --strides
--paddings --pools --fc --act --todo --alg --check-thm --T1 --T2 --betas --random-sign
--thirdphase --same-update --loss --softmax --optim --lrs --wds --mmt --epochs --mbs --seed
--device --save --load-path --eps --image-print --attack-step --predict-step
--train-attack-step --attack-norm --attack --attack-images --adv-fraction --n_feats
--lca_lambda --tau --eta --lca_stride --lca_iters --dict_loss --dropouts --lca_feedback
--lca_signed --lca_raw_input""".split()


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in SPEC_FLAGS:
        assert f"{flag} " in out or f"{flag}\n" in out, flag


def test_a_training_run_does_not_load_art():
    """ART takes seconds to import: only --todo attack and advtrain load it."""
    code = ("import sys, config, main; args, typed = main.parse(sys.argv[1:]); "
            "config.validate(args, typed); print('art' in sys.modules)")
    for argv, loaded in ((["--todo", "train"], "False"), (["--todo", "advtrain"], "True")):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                             text=True, cwd=ROOT, check=True).stdout
        assert out.split()[-1] == loaded, argv
