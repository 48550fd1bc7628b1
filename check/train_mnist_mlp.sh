# EP MLP on MNIST, checking the GDU theorem while it trains (Laborieux et al. check/train_mnist.sh)
python main.py --model 'MLP' --task 'MNIST' --archi 784 512 10 --optim 'adam' --lrs 5e-4 5e-4 --epochs 2 --act 'mysig' --todo 'train' --betas 0.0 0.1 --T1 30 --T2 10 --mbs 50 --device 0 --check-thm --save "$@"
