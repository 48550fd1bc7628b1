# Adversarial robustness on the offline digits (--task MNIST5K), through ART: the quick-start
# EP MLP is trained, then attacked with PGD-20 (Linf and L2, gradient through all 30 free
# steps), FGSM and the gradient-free Square attack over the study's eps sweeps; a second model
# is trained on PGD examples at Linf eps 0.1 (advtrain) and attacked the same way. Writes
# Adversarial_Accuracy.txt, adversarial_accuracy.png and adversarial_examples_*.png in each run
# folder under $ROOT (default results/attack_mnist5k). Figures and times: README, BENCHMARKS.md.
set -e
ROOT=${ROOT:-results/attack_mnist5k}/$(date +%Y-%m-%d_%H-%M-%S)
python main.py --model MLP --task MNIST5K --archi 784 512 10 --optim adam --lrs 5e-4 5e-4 --epochs 10 --act mysig --todo train --betas 0.0 0.1 --T1 30 --T2 10 --mbs 50 --alg EP --loss mse --seed 0 --save --results-dir "$ROOT/plain" "$@"
PLAIN=$(ls -d "$ROOT"/plain/*/*/*/*)
python main.py --todo attack --load-path "$PLAIN" --attack pgd fgsm --attack-norm inf --mbs 100 --image-print 8
python main.py --todo attack --load-path "$PLAIN" --attack pgd fgsm --attack-norm 2 --mbs 100 --image-print 8
python main.py --todo attack --load-path "$PLAIN" --attack square --attack-norm inf 2 --mbs 100
python main.py --model MLP --task MNIST5K --archi 784 512 10 --optim adam --lrs 5e-4 5e-4 --epochs 10 --act mysig --todo advtrain --eps 0.1 --attack-norm inf --betas 0.0 0.1 --T1 30 --T2 10 --mbs 50 --alg EP --loss mse --seed 0 --save --results-dir "$ROOT/advtrain" "$@"
ADV=$(ls -d "$ROOT"/advtrain/*/*/*/*)
python main.py --todo attack --load-path "$ADV" --attack pgd fgsm --attack-norm inf --mbs 100 --image-print 8
python main.py --todo attack --load-path "$ADV" --attack square --attack-norm inf --mbs 100
