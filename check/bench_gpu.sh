# One epoch of the published CIFAR-10 EP line (check/train_cifar10_mse_ep_symmetric.sh) on
# 1, 2, 4, ... GPUs of this node with torchrun, in fp32, bf16, bf16 compiled (CUDA graphs), that
# with --deterministic (what reproducibility costs) and with the recommended relaxation (--fast:
# --solver evenodd --tol 1e-4; on random weights and images, so its steps are only indicative),
# then the roofline bound of the same epoch on an H100 (bench_gpu.py; BENCHMARKS.md).
# Without a GPU it runs a tiny network on the CPU with 1 and 2 processes: its own test.
# Extra flags go to bench_gpu.py (e.g. --batches 20). A variant that fails prints its error
# (to stderr) and the others still run; the script then exits with 1.
gpus=$(python -c "import torch; print(torch.cuda.device_count())") || exit 1
tiny=""
if [ "$gpus" = 0 ]; then gpus=2; tiny="--tiny"; fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed=0
variants=("--precision fp32" "--precision bf16" "--precision bf16 --compile")
variants+=("--precision bf16 --compile --deterministic" "--precision bf16 --compile --fast")
echo "| processes | precision | ms / training batch | ms / 500 test images | epoch (s) | vs the published ~${PUBLISHED_EPOCH_S:-240} s |"
echo "|---|---|---|---|---|---|"
n=1
while [ "$n" -le "$gpus" ]; do
  for variant in "${variants[@]}"; do
    # torchrun's own chatter stays in the log unless the variant fails
    if ! torchrun --standalone --nproc_per_node "$n" bench_gpu.py $variant $tiny "$@" 2>"$log"; then
      echo "| $n | $variant | failed (error below the table) |"
      { echo "bench_gpu.py $variant on $n processes failed:"; tail -n 30 "$log"; } >&2
      failed=1
    fi
  done
  n=$((n * 2))
done
echo
python bench_gpu.py --roofline || failed=1
exit "$failed"
