# The MNIST GDU check on the offline digits (--task MNIST5K): same lines, no download; seconds on a CPU
set -e
python main.py --model MLP --task MNIST5K --archi 784 512 10 --act tanh --todo gducheck --betas 0.0 0.01 --T1 30 --T2 10 --mbs 50 --loss mse --save --seed 0 "$@"
python main.py --model MLP --task MNIST5K --archi 784 512 10 --act tanh --todo gducheck --betas 0.0 0.1 --T1 30 --T2 10 --mbs 50 --loss mse --save --seed 0 "$@"
python main.py --model MLP --task MNIST5K --archi 784 512 10 --act tanh --todo gducheck --betas 0.0 0.1 --T1 30 --T2 10 --mbs 50 --loss mse --save --thirdphase --seed 0 "$@"
