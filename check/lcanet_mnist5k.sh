# LCANet on the offline digits (--task MNIST5K), EP and BP, same layers and code: 32 atoms of
# 5x5 at stride 2 (a 32x14x14 code; tau 30 keeps the learned dictionary's code settling),
# one 3x3 conv 32->64 with max pooling, a softmax read-out; the dictionary learns from both the
# reconstruction and the classification. EP runs 5 LCA iterations per network step with the
# top-down input into the code scaled by 0.03 (larger, the code runs away: README); BP codes
# each image with 150 LCA iterations. Measured on 2 CPU cores (README, BENCHMARKS.md): EP
# 96.2% test (10 epochs, about 1.5 min each on one thread), BP 96.1% (6 epochs, about 3 min).
set -e
python main.py --model LCACNN --task MNIST5K --alg EP --channels 32 32 64 --kernels 5 3 --strides 2 1 --paddings 2 1 --pools im --optim adam --lrs 5e-4 5e-4 5e-4 --epochs 10 --act mysig --softmax --loss cel --betas 0.0 0.5 --thirdphase --T1 30 --T2 10 --mbs 50 --lca_lambda 0.25 --tau 30 --lca_iters 5 --lca_feedback 0.03 --dict_loss both --seed 1 --save "$@"
python main.py --model LCACNN --task MNIST5K --alg BP --channels 32 32 64 --kernels 5 3 --strides 2 1 --paddings 2 1 --pools im --optim adam --lrs 1e-3 1e-3 1e-3 --epochs 6 --act mysig --softmax --loss cel --mbs 50 --lca_lambda 0.25 --tau 30 --lca_iters 150 --dict_loss both --seed 1 --save "$@"
