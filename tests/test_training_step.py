"""The whole training step: weights after several batches of Trainer.fit equal a plain loop.

The reference builds the same per-layer groups on torch.optim's simplest (for-loop) optimizer
and hands it contiguous gradients; the trainer's fused optimizer must end at the same weights.
(A fused kernel once paired channels-last conv gradients with their weights by memory
position: every batch's gradients were right and the weights drifted.)
"""

import copy

import pytest
import torch

import config
import main
from data_utils import Split
from model_utils import Phases, bp_gradients, bptt_gradients, ep_gradients
from trainer import Trainer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ARCHS = {  # flags, number of weight layers
    "MLP": (["--archi", "784", "24", "10"], 2),
    "VFMLP": (["--archi", "784", "24", "16", "10"], 3),
    "CNN": (["--channels", "4", "6", "--kernels", "5", "3", "--pools", "ma", "--fc", "10"], 3),
    "VFCNN": (["--channels", "4", "6", "--kernels", "5", "3", "--pools", "mm", "--fc", "10"], 3),
    "LCACNN": (["--channels", "4", "4", "6", "--kernels", "5", "3", "--strides", "2", "1",
                "--paddings", "2", "1", "--pools", "im", "--tau", "8", "--lca_iters", "2",
                "--eta", "0.05"], 3),
}
OPTIMS = {"sgd": ["--optim", "sgd", "--mmt", "0.9"], "adam": ["--optim", "adam"]}
CASES = [(m, o, a) for m in ARCHS for o in OPTIMS for a in ("EP", "BPTT", "BP")
         if not (m.startswith("VF") and a == "BP")]
DROPOUTS = ["--dropouts", "0.8", "1", "0.6"]  # CNN: the input, conv 1 (kept), conv 2
CASES += [("CNN", "sgd", a) for a in ("EP-dropout", "BPTT-dropout", "BP-dropout")]


def plain_loop(model, args, data, n_batches):
    """The same batches through the estimators and a for-loop torch.optim on contiguous .grad."""
    groups = [{"params": list(syn.parameters()), "lr": lr, "weight_decay": wd}
              for syn, lr, wd in zip(model.synapses, args.lrs, args.wds)]
    if args.optim == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=args.mmt, foreach=False)
    else:
        optimizer = torch.optim.Adam(groups, foreach=False)
    gen = torch.Generator(device=data.x.device).manual_seed(args.seed)
    perm = torch.randperm(len(data), generator=gen, device=data.x.device)
    ph = Phases(args.T1, args.T2, *args.betas, args.thirdphase)
    shapes = [data.x.shape[1:]] + list(model.state_shapes)
    for b in range(n_batches):
        idx = perm[b * args.mbs:(b + 1) * args.mbs]
        x, y = data.x[idx], data.y[idx]
        masks = None
        if args.dropouts:  # inverted masks of the layers each synapse reads, one draw a batch
            masks = tuple(None if p == 1 else (torch.rand(len(y), *shape, generator=gen,
                                                          device=x.device) < p).to(x) / p
                          for p, shape in zip(args.dropouts, shapes))
        if args.alg == "EP":
            s = ep_gradients(model, x, y, ph, masks=masks)
        elif args.alg == "BPTT":
            s = bptt_gradients(model, x, y, ph, masks)
        else:
            s = bp_gradients(model, x, y, masks)
        for p in model.parameters():
            p.grad = p.grad.contiguous()
        optimizer.step()
        if model.sparse_coding is not None:
            dictionary_step(model.sparse_coding.weight, x, s[0][0], args.eta, args.strides[0],
                            args.paddings[0])


def dictionary_step(D, x, a, eta, stride, padding):
    """LCANet after the optimizer: a gradient step on the batch-mean reconstruction error at the
    free code (a transposed convolution here, autograd for its gradient), then unit atoms."""
    with torch.enable_grad():
        x = (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + 1e-6)
        d = D.detach().requires_grad_()
        recon = torch.nn.functional.conv_transpose2d(a, d, stride=stride, padding=padding,
                                                     output_padding=1)
        (grad,) = torch.autograd.grad(0.5 * (x - recon).pow(2).sum() / len(x), d)
    with torch.no_grad():
        D.sub_(eta * grad)
        D.div_(D.flatten(1).norm(dim=1).view(-1, 1, 1, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model_name,optim,alg", CASES, ids=["-".join(c) for c in CASES])
def test_weights_after_training_equal_a_plain_optimizer_loop(model_name, optim, alg, device,
                                                              float64):
    arch, n_layers = ARCHS[model_name]
    alg, dropout = alg.split("-")[0], alg.endswith("dropout")
    arch = arch + (DROPOUTS if dropout else [])
    argv = (["--model", model_name, "--alg", alg, "--T1", "6", "--T2", "3", "--mbs", "8"]
            + ["--lrs"] + ["0.05"] * n_layers + ["--wds"] + ["1e-3"] * n_layers
            + arch + OPTIMS[optim] + (["--thirdphase"] if alg == "EP" else []))
    args, typed = main.parse(argv)
    config.validate(args, typed)
    model = config.build_model(args).to(device)
    with torch.no_grad():  # large enough weights that every layer's update matters
        for p in model.parameters():
            if model.sparse_coding is None or p is not model.sparse_coding.weight:
                p.mul_(3)
    reference, initial = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    data = Split(torch.rand(32, 1, 28, 28, device=device), torch.arange(32, device=device) % 10)
    trainer = Trainer(model, data, data, args, None)
    assert trainer.fit(1)
    plain_loop(reference, args, data, n_batches=4)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.stride() == q.stride(), name
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)  # the bug: 1e-2
        assert not torch.equal(p, initial[name]), name  # every weight took steps
