"""Bad command lines end in validation, before any data or model, with one line on stderr
that names the flag, and exit code 2 (tests/test_cli.py holds the first such table)."""

import pytest

import config
import main
from errors import UsageError
from helpers import TINY_MLP, cli

MLP = TINY_MLP
CNN = ["--model", "CNN", "--channels", "4", "--kernels", "5", "--fc", "10"]
VFCNN = ["--model", "VFCNN", "--channels", "4", "--kernels", "5", "--fc", "10"]
VFMLP = ["--model", "VFMLP"] + TINY_MLP
NONE: list[str] = []

# (base, extra flags, the flag the message must name)
ROWS = [
    # non-finite floats: argparse's float() takes nan, inf, -inf and 1e999 (= inf)
    *[(MLP, ["--lrs", v, "0.05"], "--lrs") for v in ("nan", "inf", "-inf", "1e999")],
    (MLP, ["--lrs", "0.05", "NaN"], "--lrs"),
    *[(MLP, ["--wds", v, "0"], "--wds") for v in ("nan", "inf", "-inf", "1e999")],
    *[(MLP, ["--betas", "0", v], "--betas") for v in ("nan", "inf", "-inf", "1e999")],
    (MLP, ["--betas", "nan", "0.1"], "--betas"),
    *[(MLP, ["--mmt", v], "--mmt") for v in ("nan", "inf", "-inf", "1e999")],
    *[(MLP, ["--scale", v], "--scale") for v in ("nan", "inf", "-inf", "1e999")],
    (MLP, ["--eps", "nan"], "--eps"),
    (MLP, ["--eps", "0.1", "inf"], "--eps"),
    (MLP, ["--lca_lambda", "nan"], "--lca_lambda"),
    (MLP, ["--tau", "inf"], "--tau"),
    (MLP, ["--eta", "-inf"], "--eta"),
    (MLP, ["--dropouts", "nan", "1"], "--dropouts"),
    # float ranges
    (MLP, ["--lrs", "-0", "-1"], "--lrs"),
    (MLP, ["--lrs", "0.05", "-0.1"], "--lrs"),
    (MLP, ["--lrs", "-1e-3", "0.05"], "--lrs"),
    (MLP, ["--lrs", "-inf", "0"], "--lrs"),
    (MLP, ["--wds", "-1", "0"], "--wds"),
    (MLP, ["--wds", "0", "-1e-4"], "--wds"),
    (MLP, ["--wds", "1e30", "1e30"], "--wds"),
    *[(MLP, ["--mmt", v], "--mmt") for v in ("1", "1.5", "-0.1", "-1e-3")],
    (MLP, ["--optim", "adam"], "--mmt"),
    (NONE, ["--optim", "adam", "--mmt", "0"], "--mmt"),
    (NONE, ["--mmt", "0.5"], "--mmt"),
    *[(MLP, ["--scale", v], "--scale") for v in ("0", "-1", "1e30", "101", "-0.5")],
    (MLP, ["--betas", "0", "1e30"], "--betas"),
    (MLP, ["--betas", "0", "-101"], "--betas"),
    (MLP, ["--betas", "200", "0.1"], "--betas"),
    (MLP, ["--alg", "BP", "--betas", "0", "1e3"], "--betas"),
    (MLP, ["--betas", "0.5"], "--betas"),
    (MLP, ["--betas", "0", "0.1", "0.3"], "--betas"),
    (MLP, ["--betas", "0", "1e-300"], "--betas"),
    (MLP, ["--betas", "0.5", "0.5000001"], "--betas"),
    (MLP, ["--todo", "gducheck", "--betas", "0", "1e-14"], "--betas"),
    # solvers
    (MLP, ["--solver", "evenod"], "--solver"),
    (MLP, ["--solver", "jacobi"], "--solver"),
    *[(MLP, ["--tol", v], "--tol") for v in ("0", "-1e-4", "nan", "inf", "-0")],
    (MLP, ["--solver", "anderson", "--anderson-m", "0"], "--anderson-m"),
    (MLP, ["--anderson-m", "3"], "--anderson-m"),
    (MLP, ["--tol", "1e-4", "--check-every", "0"], "--check-every"),
    (MLP, ["--check-every", "5"], "--check-every"),
    (MLP, ["--todo", "gducheck", "--tol", "1e-4"], "--tol"),
    (MLP, ["--alg", "BP", "--solver", "evenodd"], "--solver"),
    (MLP, ["--solver", "anderson", "--act", "hard_sigmoid"], "--solver"),
    (MLP, ["--nudged-solver", "anderson", "--act", "my_hard_sig"], "--nudged-solver"),
    (MLP, ["--nudged-solver", "evenodd", "--alg", "BPTT"], "--nudged-solver"),
    (MLP, ["--nudged-solver", "evenodd", "--todo", "gducheck"], "--nudged-solver"),
    (MLP, ["--nudged-solver", "evnodd"], "--nudged-solver"),
    # architecture
    (NONE, ["--archi", "784", "0", "10"], "--archi"),
    (NONE, ["--archi", "784", "-5", "10"], "--archi"),
    (NONE, ["--archi", "784", "32", "0"], "--archi"),
    (NONE, ["--archi", "0", "32", "10"], "--archi"),
    (NONE, ["--archi", "784", "32", "-32", "10"], "--archi"),
    (NONE, ["--archi", "784", "100000000000", "10"], "--archi"),
    (VFMLP, ["--archi", "784", "0", "10"], "--archi"),
    (CNN, ["--channels", "0"], "--channels"),
    (CNN, ["--channels", "-4"], "--channels"),
    (CNN, ["--channels", "100000000"], "--channels"),
    (CNN, ["--kernels", "0"], "--kernels"),
    (CNN, ["--kernels", "-3"], "--kernels"),
    (CNN, ["--kernels", "29"], "--kernels"),
    (CNN, ["--strides", "0"], "--strides"),
    (CNN, ["--strides", "-1"], "--strides"),
    (CNN, ["--paddings", "-1"], "--paddings"),
    (CNN, ["--paddings", "5"], "--paddings"),
    (CNN, ["--paddings", "100000"], "--paddings"),
    (CNN, ["--fc", "0", "10"], "--fc"),
    (CNN, ["--fc", "-1", "10"], "--fc"),
    (CNN, ["--fc", "10", "0"], "--fc"),
    (CNN, ["--channels", "4", "4", "--kernels", "5", "0", "--pools", "mm"], "--kernels"),
    (CNN, ["--pools", "M"], "--pools"),
    (CNN, ["--pools", "q"], "--pools"),
    (VFCNN, ["--strides", "0"], "--strides"),
    # integers
    (MLP, ["--seed", "-1"], "--seed"),
    (MLP, ["--seed", str(2**63)], "--seed"),
    (MLP, ["--seed", "99999999999999999999999"], "--seed"),
    (MLP, ["--seed", str(-2**63)], "--seed"),
    (MLP, ["--device", "-1"], "--device"),
    (MLP, ["--device", "-2"], "--device"),
    (MLP, ["--T1", "100001"], "--T1"),
    (MLP, ["--T1", "99999999999"], "--T1"),
    (MLP, ["--T1", "-5"], "--T1"),
    (MLP, ["--T2", "100001"], "--T2"),
    (MLP, ["--T2", "-3"], "--T2"),
    (MLP, ["--mbs", "-5"], "--mbs"),
    (MLP, ["--epochs", "0"], "--epochs"),
    (MLP, ["--epochs", "-1"], "--epochs"),
    # argparse's own errors name the flag too
    (MLP, ["--T1", "1.5"], "--T1"),
    (MLP, ["--T1="], "--T1"),
    (MLP, ["--mbs", "1e9"], "--mbs"),
    (MLP, ["--seed", "abc"], "--seed"),
    (MLP, ["--device", "gpu0"], "--device"),
    (MLP, ["--lrs", "fast", "0.1"], "--lrs"),
    (MLP, ["--betas", "0", "x"], "--betas"),
    (NONE, ["--archi", "784", "a", "10"], "--archi"),
    (MLP, ["--epochs"], "--epochs"),
    (MLP, ["--betas"], "--betas"),
    (NONE, ["--arch", "784", "10"], "--arch"),
    (MLP, ["--lr", "0.1"], "--lr"),
    # steps and the sign of beta2
    (MLP, ["--alg", "BPTT", "--T2", "0"], "--T2"),
    (VFMLP, ["--alg", "BPTT", "--T2", "0"], "--T2"),
    (MLP, ["--T2", "0"], "--T2"),
    (MLP, ["--thirdphase", "--betas", "0.1", "0"], "--thirdphase"),
    (MLP, ["--random-sign", "--todo", "gducheck"], "--random-sign"),
    (MLP, ["--random-sign", "--thirdphase", "--todo", "gducheck"], "--random-sign"),
    (MLP, ["--random-sign", "--betas", "0.1", "0.5"], "--random-sign"),
    (MLP, ["--random-sign", "--betas", "-0.2", "0.5"], "--random-sign"),
    (MLP, ["--random-sign", "--thirdphase"], "--random-sign"),
    # Continual EP: the published rule's models and precisions, and its own flags
    (VFMLP, ["--alg", "CEP"], "--alg"),
    (VFCNN, ["--alg", "CEP"], "--alg"),
    (["--model", "LCACNN", "--channels", "4", "4", "--kernels", "5", "3", "--pools", "im",
      "--fc", "10"], ["--alg", "CEP"], "--alg"),
    (MLP, ["--alg", "CEP", "--precision", "bf16"], "--precision"),
    (MLP, ["--alg", "CEP", "--T2", "0"], "--T2"),
    (MLP, ["--alg", "CEP", "--betas", "0.2", "0.2"], "--betas"),
    (MLP, ["--alg", "CEP", "--nudged-solver", "evenodd"], "--nudged-solver"),
    (MLP, ["--alg", "CEP", "--thirdphase", "--betas", "0", "0"], "--betas"),
    (MLP, ["--cep-debug"], "--cep-debug"),
    (MLP, ["--alg", "CEP", "--cep-debug", "--todo", "gducheck"], "--cep-debug"),
    (MLP, ["--alg", "BPTT", "--thirdphase"], "--thirdphase"),
    # --nudge and the clamping rules
    (MLP, ["--nudge", "both"], "--nudge"),
    (MLP, ["--nudge", "positive", "--thirdphase"], "--thirdphase"),
    (MLP, ["--nudge", "negative", "--betas", "0", "-0.2"], "--nudge"),
    (MLP, ["--nudge", "negative", "--random-sign"], "--random-sign"),
    (MLP, ["--alg", "BPTT", "--nudge", "centered"], "--nudge"),
    (MLP, ["--alg", "CpL", "--softmax", "--loss", "cel"], "--softmax"),
    (MLP, ["--alg", "CpL", "--betas", "0.1", "0.5"], "--betas"),
    (MLP, ["--alg", "CL", "--betas", "0", "0.5"], "--alg"),
    (MLP, ["--alg", "CL", "--nudge", "centered"], "--alg"),
    (MLP, ["--alg", "CL", "--check-thm"], "--check-thm"),
    (MLP, ["--alg", "CpL", "--nudge", "centered", "--betas", "0", "0"], "--betas"),
    # holomorphic EP: dynamics holomorphic in beta, and its own flag
    (MLP, ["--alg", "hEP", "--act", "hard_sigmoid"], "--act"),
    (CNN, ["--alg", "hEP", "--act", "tanh"], "--pools"),
    (VFMLP, ["--alg", "hEP", "--act", "tanh"], "--model"),
    (MLP, ["--alg", "hEP", "--act", "tanh", "--loss", "cel"], "--loss"),
    (MLP, ["--alg", "hEP", "--act", "tanh", "--precision", "bf16"], "--precision"),
    (MLP, ["--alg", "hEP", "--act", "tanh", "--holo-points", "1"], "--holo-points"),
    (MLP, ["--alg", "hEP", "--act", "tanh", "--thirdphase"], "--thirdphase"),
    (MLP, ["--alg", "hEP", "--act", "tanh", "--nudge", "negative"], "--nudge"),
    (MLP, ["--holo-points", "8"], "--holo-points"),
    (MLP, ["--alg", "hEP", "--betas", "0", "0"], "--betas"),
    (MLP, ["--alg", "hEP", "--T2", "0"], "--T2"),
    (MLP, ["--alg", "hEP", "--dynamics", "autograd"], "--dynamics"),
    # paths
    (MLP, ["--load-path", ""], "--load-path"),
    (MLP, ["--todo", "evaluate", "--load-path", ""], "--load-path"),
    (MLP, ["--results-dir", ""], "--results-dir"),
    (MLP, ["--results-dir", "  "], "--results-dir"),
    (MLP, ["--data-dir", ""], "--data-dir"),
    # names: empty, other case
    (MLP, ["--model", ""], "--model"),
    (MLP, ["--model", "mlp"], "--model"),
    (MLP, ["--todo", ""], "--todo"),
    (MLP, ["--todo", "Train"], "--todo"),
    (MLP, ["--task", "mnist5k"], "--task"),
    (MLP, ["--act", ""], "--act"),
    (MLP, ["--act", "Tanh"], "--act"),
    (MLP, ["--loss", "MSE"], "--loss"),
    (MLP, ["--alg", "ep"], "--alg"),
    (MLP, ["--alg", ""], "--alg"),
    (MLP, ["--optim", "SGD"], "--optim"),
    (MLP, ["--dynamics", "implicit"], "--dynamics"),
    (MLP, ["--precision", "fp16"], "--precision"),
    # flags of later versions or of other models
    (MLP, ["--attack-norm", "2"], "--attack-norm"),
    (MLP, ["--n_feats", "8"], "--n_feats"),
    (MLP, ["--image-print", "5"], "--image-print"),
    (MLP, ["--fc", "10"], "--fc"),
    (CNN, ["--archi", "784", "32", "10"], "--archi"),
]


def argv_of(row) -> list[str]:
    base, extra, _ = row.values if hasattr(row, "values") else row
    return base + extra


def row_id(row) -> str:
    base, extra, _ = row.values if hasattr(row, "values") else row
    name = {id(MLP): "mlp", id(CNN): "cnn", id(VFCNN): "vfcnn", id(VFMLP): "vfmlp"}
    return " ".join([name.get(id(base), "defaults")] + [repr(a) if not a.strip() else a
                                                         for a in extra])


@pytest.fixture
def nothing_built(monkeypatch):
    """A row that gets past validation fails the test instead of building or loading."""
    def built(*_):
        raise AssertionError("validation accepted the command line")
    monkeypatch.setattr(config, "build_model", built)
    monkeypatch.setattr(main, "load_task", built, raising=False)


@pytest.mark.parametrize("base,extra,flag", ROWS, ids=[row_id(r) for r in ROWS])
def test_bad_input_one_line_naming_the_flag(base, extra, flag, capsys, nothing_built):
    rc, _, err = cli(base + extra, capsys)
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 3 and lines[0].startswith("main.py: error: "), err
    assert flag in lines[0], err


def test_table_has_100_distinct_lines():
    argvs = {tuple(argv_of(r)) for r in ROWS}
    assert len(argvs) == len(ROWS) >= 100


def test_betas_count_checked_when_the_parser_takes_any():
    args, typed = main.parse(MLP)
    args.betas = [0.0, 0.1, 0.3]
    with pytest.raises(UsageError, match="--betas 0 0.1 0.3: give exactly two values"):
        config.validate(args, typed)


def resumed(argv: list[str], saved: dict):
    """`argv` with a --load-path run whose saved arguments are a valid tiny run's + `saved`."""
    old, old_typed = main.parse(MLP)
    config.validate(old, old_typed)
    args, typed = main.parse(argv + ["--load-path", "run"])
    saved = vars(old) | saved
    keys = config.checkpoint_keys(args, typed, saved)
    return config.merge_saved(args, typed, saved), typed, keys


def test_error_names_the_checkpoint_for_saved_values(capsys):
    args, typed, keys = resumed([], {"lrs": [-0.1, 0.05]})
    assert {"lrs", "archi", "optim", "seed", "T1", "betas"} <= keys
    with pytest.raises(UsageError, match=r"--lrs -0.1: .*\(--lrs saved in the --load-path run's "
                       r"checkpoint\)$"):
        config.validate(args, typed, keys)
    args, typed, keys = resumed(["--T2", "0"], {"alg": "BPTT"})
    assert "T2" not in keys
    with pytest.raises(UsageError, match=r"--T2 0: BPTT .*\(--alg saved in the --load-path"):
        config.validate(args, typed, keys)


def test_typed_errors_do_not_blame_the_checkpoint(capsys):
    args, typed, keys = resumed(["--T1", "0"], {})
    with pytest.raises(UsageError) as e:
        config.validate(args, typed, keys)
    assert str(e.value) == "--T1 must be at least 1 (got 0)"


def test_saved_flags_the_new_todo_ignores_are_no_error(capsys):
    args, typed, keys = resumed(["--todo", "gducheck"], {"random_sign": True})
    config.validate(args, typed, keys)  # gducheck does not draw signs: the saved flag is moot
    args, typed, keys = resumed(["--mmt", "0.5"], {"optim": "adam", "mmt": 0.0})
    assert "ignored" in capsys.readouterr().out
    config.validate(args, typed, keys)  # the typed --mmt was ignored for the saved 0.0
    assert args.mmt == 0.0
