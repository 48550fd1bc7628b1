# The robustness study of the seed 004 (lanl/AdvEP's analyses) on the offline digits: the
# quick-start MLP and the MNIST CNN line (at 10x its lrs, 3 epochs, --solver evenodd --tol
# 1e-4) trained with EP, BPTT and BP; each attacked white-box (PGD and Square, Linf, the study's
# eps sweep; HopSkipJump L2 on a small budget) with its PGD examples saved; the 15 corruptions
# of check/make_corruptions.py; the characteristic time, clean and under PGD at Linf 0.1 (EP
# and BPTT: BP has no free steps); transfer of the PGD examples between the three rules of a
# model; then --todo report over everything.
#   lines="mlp cnn" (default mlp: the CNN part takes hours on 2 cores), OUT=results/robustness,
#   HSJ="--hsj-iter 10 --hsj-evals 200" (ART's default 50 / 10000 is hours per model here).
set -e
out=${OUT:-results/robustness}
hsj=${HSJ:---hsj-iter 10 --hsj-evals 200}
mlp="--model MLP --task MNIST5K --archi 784 512 10 --optim adam --lrs 5e-4 5e-4 --epochs 10 --act mysig --betas 0.0 0.1 --T1 30 --T2 10 --mbs 50"
cnn="--model CNN --task MNIST5K --channels 32 64 --kernels 5 5 --pools mm --strides 1 1 --fc 10 --optim adam --act hard_sigmoid --betas 0.0 0.4 --T1 200 --T2 10 --mbs 100 --epochs 3 --lrs 5e-4 1e-4 8e-5"
declare -A line=([mlp]="$mlp" [cnn]="$cnn")
declare -A relax=([mlp]="" [cnn]="--solver evenodd --tol 1e-4")  # (BP has no relaxation)
declare -A unroll=([mlp]="" [cnn]="--attack-step 60")  # a phase's sweeps (README)
# the CNN's white-box sweeps on 200 digits and 3 eps: the full sweep is ~50 min a model here
declare -A sweep=([mlp]="" [cnn]="--eps 0.01 0.03 0.1")
declare -A pgd_images=([mlp]="" [cnn]="--attack-images 200")
declare -A hsj_images=([mlp]="" [cnn]="--attack-images 30")  # ~25 s an image on the CNN here
[ -d "$out/mnist_c" ] || python check/make_corruptions.py "$out/mnist_c"
for model in ${lines:-mlp}; do
  for alg in EP BPTT BP; do
    dir="$out/$model/$alg"
    flags="${line[$model]}"
    [ "$alg" != BP ] && flags="$flags ${relax[$model]}"
    [ -d "$dir" ] || python main.py $flags --alg "$alg" --seed 0 --save --results-dir "$dir"
    run=$(dirname "$(find "$dir" -name metrics.csv | head -n 1)")
    steps=${unroll[$model]}
    [ "$alg" = BP ] && steps=""
    python main.py --todo attack --load-path "$run" --attack pgd --save-examples $steps \
      ${sweep[$model]} ${pgd_images[$model]}
    python main.py --todo attack --load-path "$run" --attack square ${sweep[$model]}
    python main.py --todo attack --load-path "$run" --attack hsj --attack-norm 2 $hsj \
      ${hsj_images[$model]}
    python main.py --todo corruptions --load-path "$run" --corruptions-dir "$out/mnist_c"
    if [ "$alg" != BP ]; then
      python main.py --todo characteristic --load-path "$run"
      python main.py --todo characteristic --load-path "$run" $steps --attack pgd --eps 0.1
    fi
  done
  for target in EP BPTT BP; do
    run=$(dirname "$(find "$out/$model/$target" -name metrics.csv | head -n 1)")
    sources=$(find "$out/$model" -name examples_pgd_Linf.npz -not -path "*/$target/*")
    python main.py --todo transfer --load-path "$run" --examples $sources
  done
done
python main.py --todo report "$out"
