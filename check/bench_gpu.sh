# One epoch of the published CIFAR-10 EP line (check/train_cifar10_mse_ep_symmetric.sh) on
# 1, 2, 4, ... GPUs of this node with torchrun, in fp32, bf16 and bf16 compiled (CUDA graphs),
# then the roofline bound of the same epoch on an H100 (bench_gpu.py; BENCHMARKS.md).
# Without a GPU it runs a tiny network on the CPU with 1 and 2 processes: its own test.
# Extra flags go to bench_gpu.py (e.g. --batches 20).
set -e
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
tiny=""
if [ "$gpus" = 0 ]; then gpus=2; tiny="--tiny"; fi
echo "| processes | precision | ms / training batch | ms / 500 test images | epoch (s) | vs the published ~${PUBLISHED_EPOCH_S:-240} s |"
echo "|---|---|---|---|---|---|"
n=1
while [ "$n" -le "$gpus" ]; do
  for variant in "--precision fp32" "--precision bf16" "--precision bf16 --compile"; do
    torchrun --standalone --nproc_per_node "$n" bench_gpu.py $variant $tiny "$@" 2>/dev/null
  done
  n=$((n * 2))
done
echo
python bench_gpu.py --roofline
