# The EP CNN line on MNIST (check/train_mnist_cnn.sh) with the relaxation we recommend: even-odd
# sweeps in the free phase, each image stopped once its states change by less than 1e-4 a sweep
# (checked every 10; --T1 200 is the cap), the nudged phase as published (10 synchronous steps).
# Measured on the offline digits (README, "Fast relaxation"; BENCHMARKS.md): about 5x faster an
# epoch at no cost in accuracy.
python main.py --model 'CNN' --task 'MNIST' --channels 32 64 --kernels 5 5 --pools 'mm' --strides 1 1 --fc 10 --optim 'adam' --lrs 5e-5 1e-5 8e-6 --epochs 1 --act 'hard_sigmoid' --todo 'train' --betas 0.0 0.4 --T1 200 --T2 10 --mbs 100 --solver evenodd --tol 1e-4 --device 0 "$@"
