# The recommended relaxation (check/train_mnist_cnn_fast.sh: --solver evenodd --tol 1e-4)
# against the published synchronous steps, on the offline digits (--task MNIST5K), one run
# after the other on this machine, fp32 and bf16, seeds 0 1: the CNN line for 3 epochs at its
# lrs, and at 10x its lrs (on 4000 digits the published lrs still learn the first classes after
# 3 epochs). Then a table: best test accuracy per seed and their mean, seconds of training per
# epoch and of wall clock per epoch (with evaluation and start-up), the steps per batch.
# About 1.5 hours on 2 cores; `lines=cnn precisions=fp32 seeds=0` runs a part (the table
# covers whatever $OUT holds).
set -e
out=${OUT:-results/solvers}
entry=main.py
cnn="--model CNN --task MNIST5K --channels 32 64 --kernels 5 5 --pools mm --strides 1 1 --fc 10 --optim adam --act hard_sigmoid --betas 0.0 0.4 --T1 200 --T2 10 --mbs 100 --epochs 3"
declare -A relaxation=([sync]="" [fast]="--solver evenodd --tol 1e-4")
declare -A lrs=([cnn]="5e-5 1e-5 8e-6" [cnn10x]="5e-4 1e-4 8e-5")
for line in ${lines:-cnn cnn10x}; do
  for precision in ${precisions:-fp32 bf16}; do
    for seed in ${seeds:-0 1}; do
      for solver in sync fast; do
        dir="$out/$line-$precision-$solver/seed$seed"
        [ -d "$dir" ] && continue  # done before: the table reads it
        start=$(date +%s.%N)
        python "$entry" $cnn --lrs ${lrs[$line]} --precision $precision --seed $seed ${relaxation[$solver]} --save --results-dir "$dir"
        echo "$(date +%s.%N) - $start" | bc > "$dir/wall_seconds"
      done
    done
  done
done
python - "$out" <<'PY'
import csv, pathlib, statistics, sys
root = pathlib.Path(sys.argv[1])
print("| line | precision | relaxation | best test accuracy per seed (%) | mean | training s/epoch | "
      "wall s/epoch | free + nudged steps per batch |")
print("|---|---|---|---|---|---|---|---|")
for folder in sorted(p for p in root.iterdir() if p.is_dir()):
    seeds = sorted(folder.glob("seed*"))
    runs = [list(csv.DictReader(open(next(s.rglob("metrics.csv"))))) for s in seeds]
    best = [max(float(e["test_acc"]) for e in r) for r in runs]
    train = statistics.mean(float(e["seconds"]) for r in runs for e in r)
    wall = statistics.mean(float((s / "wall_seconds").read_text()) / len(r)
                           for s, r in zip(seeds, runs))
    steps = "200 + 10" if "free_steps" not in runs[0][0] else "{:.1f} + {:.1f}".format(
        *(statistics.mean(float(e[k]) for r in runs for e in r)
          for k in ("free_steps", "nudged_steps")))
    line, precision, relaxation = folder.name.split("-")
    print(f"| {line} | {precision} | {relaxation} | {', '.join(f'{b:.1f}' for b in best)} | "
          f"{statistics.mean(best):.2f} | {train:.1f} | {wall:.1f} | {steps} |")
PY
