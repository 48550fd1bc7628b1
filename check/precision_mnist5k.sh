# --precision bf16 against fp32 on the offline digits (--task MNIST5K): the published MNIST MLP
# and CNN lines (check/train_mnist_mlp.sh without --check-thm, check/train_mnist_cnn.sh), 3
# epochs, seeds 0 1 2, then the final test accuracies side by side (BENCHMARKS.md has a run).
set -e
out=${1:-results/precision}
train() { line=$1; shift; python main.py "$@" --save --results-dir "$out/$line-$precision"; }
for seed in 0 1 2; do
  for precision in fp32 bf16; do
    train mlp --model MLP --task MNIST5K --archi 784 512 10 --optim adam --lrs 5e-4 5e-4 --epochs 3 --act mysig --betas 0.0 0.1 --T1 30 --T2 10 --mbs 50 --seed $seed --precision $precision
    train cnn --model CNN --task MNIST5K --channels 32 64 --kernels 5 5 --pools mm --strides 1 1 --fc 10 --optim adam --lrs 5e-5 1e-5 8e-6 --epochs 3 --act hard_sigmoid --betas 0.0 0.4 --T1 200 --T2 10 --mbs 100 --seed $seed --precision $precision
  done
done
python - "$out" <<'PY'
import csv, pathlib, statistics, sys
root = pathlib.Path(sys.argv[1])
print("| line | precision | final test accuracy per seed (%) | mean | s/epoch (median) |")
print("|---|---|---|---|---|")
for line in ("mlp", "cnn"):
    for precision in ("fp32", "bf16"):
        rows = [list(csv.DictReader(open(m))) for m in sorted((root / f"{line}-{precision}").rglob("metrics.csv"))]
        accs = [float(r[-1]["test_acc"]) for r in rows]
        secs = statistics.median(float(e["seconds"]) for r in rows for e in r)
        print(f"| {line.upper()} | {precision} | {', '.join(f'{a:.1f}' for a in accs)} | {statistics.mean(accs):.2f} | {secs:.1f} |")
PY
