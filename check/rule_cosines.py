"""How well each learning rule's update points along the gradient: from the same initial
weights (--seed) and on the same first training batches, the cosine between a rule's update
(all weights as one vector) and BPTT's gradient through the whole free phase (T2 = T1: the
gradient of the loss at the free state the rules start from).

    python check/rule_cosines.py MODEL FLAGS... [--batches 5] [--rules RULE ...]

RULE is a name below (EP, EP-N, EP-C, CEP, CL, CpL, CpL-N, CpL-C, hEP). CEP's update is its
batch's weight change over the lr (plain SGD: its weights move during the phase). Prints a
markdown row per rule: the mean cosine over the batches and its spread.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import config  # noqa: E402
import main  # noqa: E402
from data_utils import load_task  # noqa: E402
from trainer import Trainer  # noqa: E402

RULES = {"EP": ["--alg", "EP"], "EP-N": ["--alg", "EP", "--nudge", "negative"],
         "EP-C": ["--alg", "EP", "--nudge", "centered"], "CEP": ["--alg", "CEP", "--optim", "sgd"],
         "CL": ["--alg", "CL"], "CpL": ["--alg", "CpL"],
         "CpL-N": ["--alg", "CpL", "--nudge", "negative"],
         "CpL-C": ["--alg", "CpL", "--nudge", "centered"], "hEP": ["--alg", "hEP"]}


def trainer_for(flags: list[str], data) -> Trainer:
    """A trainer on the flags' model at its seeded initial weights (CL: without --betas, it
    has none)."""
    if flags[-1] == "CL" and "--betas" in flags:
        at = flags.index("--betas")
        flags = flags[:at] + flags[at + 3:]
    args, typed = main.parse(flags)
    config.validate(args, typed)
    torch.manual_seed(args.seed)
    return Trainer(config.build_model(args), *data, args, None)


def update(t: Trainer, x, y) -> torch.Tensor:
    """The rule's update on one batch as one vector (descent direction, lr-free)."""
    params = list(t.model.parameters())
    if t.args.alg != "CEP":
        t.train_batch(x, y)
        return torch.cat([p.grad.flatten() for p in params])
    before = [p.detach().clone() for p in params]
    t.optimizer = torch.optim.SGD([{"params": list(s.parameters()), "lr": lr}
                                   for s, lr in zip(t.model.synapses, t.args.lrs)])
    t.train_batch(x, y)
    lrs = [g["lr"] for g in t.optimizer.param_groups for _ in g["params"]]
    change = torch.cat([((b - p.detach()) / lr).flatten() for p, b, lr in zip(params, before,
                                                                              lrs)])
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    return change


def cosines(flags: list[str], rules: list[str], n_batches: int) -> dict[str, torch.Tensor]:
    """Each rule's cosine with BPTT's gradient on each of the first n_batches batches."""
    args, _ = main.parse(flags)
    data = load_task(args.task, args.data_dir, torch.device("cpu"))
    perm = torch.randperm(len(data[0]), generator=torch.Generator().manual_seed(args.seed))
    picks = [perm[i * args.mbs:(i + 1) * args.mbs] for i in range(n_batches)]
    dtype = torch.get_default_dtype()  # (float64 in its test)
    batches = [(data[0].x[i].to(dtype), data[0].y[i]) for i in picks]
    bptt = trainer_for(flags + ["--alg", "BPTT", "--T2", str(args.T1)], data)
    truth = [update(bptt, x, y) for x, y in batches]
    out = {}
    for rule in rules:
        t = trainer_for(flags + RULES[rule], data)
        out[rule] = torch.stack([torch.nn.functional.cosine_similarity(update(t, x, y), g, dim=0)
                                 for (x, y), g in zip(batches, truth)])
    return out


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    known, flags = parser.parse_known_args()
    print("| rule | cosine with BPTT's gradient (mean over batches) | spread (std) |")
    print("|---|---|---|")
    for rule, cos in cosines(flags, known.rules, known.batches).items():
        print(f"| {rule} | {cos.mean().item():.4f} | {cos.std().item():.4f} |")


if __name__ == "__main__":
    main_()
