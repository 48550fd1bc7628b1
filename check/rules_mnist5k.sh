# Every learning rule on the offline digits, same seed: the quick-start MLP (10 epochs) and
# the study's CNN line (3 epochs, 10x its lrs, --solver evenodd --tol 1e-4; hEP is not run
# there: max pooling and hard_sigmoid are not holomorphic). Then a table per line: best and
# final test accuracy, seconds of training per epoch, and (check/rule_cosines.py) the cosine
# of each rule's update with BPTT's gradient through the whole free phase, from the initial
# weights on the first 5 batches. CEP runs with SGD, as published (Adam's steps are each about
# lr in size whatever their update; docs/learning_rules.md): the MLP at the published CEP
# MNIST line's lrs, the CNN at the largest of 1x, 3x, 10x 1e-3 2e-4 1.6e-4 whose first updates
# still point along BPTT's gradient (cosine 0.67 on 2 batches of 20; at 3x the weights move so
# far within a batch's nudged steps that it falls to 0.09).
#   lines="mlp cnn" (default both), OUT=results/rules; a run already in $OUT is not redone.
set -e
out=${OUT:-results/rules}
entry=main.py  # (its lines are the variables below: tests/test_seed_lines.py reads literal ones)
mlp="--model MLP --task MNIST5K --archi 784 512 10 --optim adam --lrs 5e-4 5e-4 --act mysig --betas 0.0 0.1 --T1 30 --T2 10 --mbs 50 --epochs 10"
cnn="--model CNN --task MNIST5K --channels 32 64 --kernels 5 5 --pools mm --strides 1 1 --fc 10 --optim adam --act hard_sigmoid --betas 0.0 0.4 --T1 200 --T2 10 --mbs 100 --epochs 3 --lrs 5e-4 1e-4 8e-5 --solver evenodd --tol 1e-4"
declare -A line=([mlp]="$mlp" [cnn]="$cnn")
declare -A rules=([mlp]="EP EP-N EP-C CEP CL CpL CpL-N CpL-C hEP BPTT" [cnn]="EP EP-N EP-C CEP CL CpL CpL-N CpL-C BPTT")
declare -A cep_lrs=([mlp]="0.0056 0.0028" [cnn]="0.001 0.0002 0.00016")
declare -A rule=([EP]="--alg EP" [EP-N]="--alg EP --nudge negative"
  [EP-C]="--alg EP --nudge centered" [CEP]="--alg CEP" [CL]="--alg CL" [CpL]="--alg CpL"
  [CpL-N]="--alg CpL --nudge negative" [CpL-C]="--alg CpL --nudge centered" [hEP]="--alg hEP"
  [BPTT]="--alg BPTT")
for model in ${lines:-mlp cnn}; do
  for r in ${rules[$model]}; do
    dir="$out/$model/$r"
    [ -d "$dir" ] && continue
    flags="${line[$model]}"
    [ "$r" = CL ] && flags="${flags/--betas 0.0 0.1/}" && flags="${flags/--betas 0.0 0.4/}"
    extra=""
    [ "$r" = CEP ] && extra="--optim sgd --lrs ${cep_lrs[$model]}"
    python "$entry" $flags ${rule[$r]} $extra --seed 0 --save --results-dir "$dir"
  done
  echo "## $model"
  python - "$out/$model" ${rules[$model]} <<'PY'
import csv, pathlib, sys
root = pathlib.Path(sys.argv[1])
print("| rule | best test % | final test % | s / epoch |")
print("|---|---|---|---|")
for rule in sys.argv[2:]:
    path = next((root / rule).rglob("metrics.csv"))
    rows = list(csv.DictReader(open(path)))
    tests = [float(r["test_acc"]) for r in rows]
    secs = sum(float(r["seconds"]) for r in rows) / len(rows)
    print(f"| {rule} | {max(tests):.1f} | {tests[-1]:.1f} | {secs:.1f} |")
PY
  others=${rules[$model]/ BPTT/}
  python check/rule_cosines.py ${line[$model]} --seed 0 --batches 5 --rules ${others/CEP /}
  python check/rule_cosines.py ${line[$model]} --seed 0 --batches 5 --rules CEP \
    --lrs ${cep_lrs[$model]} | tail -n 1  # (at the lrs it trains with)
done
