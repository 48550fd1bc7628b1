# Evaluate a saved run (its best model.pt) with 250 free steps: bash check/evaluate.sh results/EP/mse/DATE/TIME
# Train and test accuracy are appended to the run's hyperparameters.txt.
python main.py --todo 'evaluate' --T1 250 --mbs 200 --save --device 0 --load-path "$1"
