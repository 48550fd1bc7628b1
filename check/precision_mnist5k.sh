# --precision bf16 against fp32 on the offline digits (--task MNIST5K), seeds 0 1 2: the
# published MNIST MLP line (check/train_mnist_mlp.sh without --check-thm) and CNN line
# (check/train_mnist_cnn.sh) for 3 epochs, the CNN line with 10x its lrs for 5 epochs (on
# 4000 digits the published lrs are still learning the first classes after 3 epochs) and
# with 3x its lrs for 10 epochs; then the test accuracies side by side (BENCHMARKS.md has a
# run). About 4 hours on one core. `precisions=bf16 lines=cnn3x seeds="0 1"` runs a part
# (one process per core: OMP_NUM_THREADS=1); the table covers whatever $OUT holds.
# `precisions=noise` trains in fp32 with noisy early free phases (check/free_noise.py; the
# MLP, whose T1 is 30, with 10 clean steps at the end instead of 40).
set -e
out=${OUT:-results/precision}
cnn="--model CNN --task MNIST5K --channels 32 64 --kernels 5 5 --pools mm --strides 1 1 --fc 10 --optim adam --act hard_sigmoid --betas 0.0 0.4 --T1 200 --T2 10 --mbs 100"
run() {  # a line's name, then its flags: trained if $lines names it
  case " ${lines:-mlp cnn cnn10x cnn3x} " in
    *" $1 "*) python "$entry" "${@:2}" --save --results-dir "$out/$1-$precision" ;;
  esac
}
for precision in ${precisions:-fp32 bf16}; do
  entry=main.py
  [ "$precision" = noise ] && entry=check/free_noise.py
  for seed in ${seeds:-0 1 2}; do
    CLEAN=${CLEAN:-10} run mlp --model MLP --task MNIST5K --archi 784 512 10 --optim adam --lrs 5e-4 5e-4 --epochs 3 --act mysig --betas 0.0 0.1 --T1 30 --T2 10 --mbs 50 --seed $seed --precision ${precision/noise/fp32}
    run cnn $cnn --lrs 5e-5 1e-5 8e-6 --epochs 3 --seed $seed --precision ${precision/noise/fp32}
    run cnn10x $cnn --lrs 5e-4 1e-4 8e-5 --epochs 5 --seed $seed --precision ${precision/noise/fp32}
    run cnn3x $cnn --lrs 1.5e-4 3e-5 2.4e-5 --epochs 10 --seed $seed --precision ${precision/noise/fp32}
  done
done
python - "$out" <<'PY'
import csv, pathlib, statistics, sys
root = pathlib.Path(sys.argv[1])


def seed(metrics):
    text = (metrics.parent / "hyperparameters.txt").read_text()
    return int(next(ln for ln in text.splitlines() if ln.startswith("seed:")).split()[1])


print("| line | precision | final test accuracy per seed, in order (%) | mean | mean of the last 3 epochs | "
      "mean over all epochs | s/epoch (median) |")
print("|---|---|---|---|---|---|---|")
for line in ("mlp", "cnn", "cnn10x", "cnn3x"):
    for precision in ("fp32", "bf16", "noise"):
        runs = sorted((root / f"{line}-{precision}").rglob("metrics.csv"), key=seed)
        if not runs:
            continue
        rows = [list(csv.DictReader(open(m))) for m in runs]
        accs = [float(r[-1]["test_acc"]) for r in rows]
        last3 = statistics.mean(float(e["test_acc"]) for r in rows for e in r[-3:])
        every = statistics.mean(float(e["test_acc"]) for r in rows for e in r)
        secs = statistics.median(float(e["seconds"]) for r in rows for e in r)
        print(f"| {line} | {precision} | {', '.join(f'{a:.1f}' for a in accs)} | "
              f"{statistics.mean(accs):.2f} | {last3:.2f} | {every:.2f} | {secs:.1f} |")
PY
