#!/usr/bin/env bash
# The README's demo: set up .venv (idempotent), train the MNIST {4,5,7} conv autoencoder of
# "Autoencoders for anomaly detection are unreliable" (Figure 2a), scan it, and say where the report is.
# Then, so that the demo also shows what a failing gate looks like, scan a linear autoencoder trained
# by gradient descent: Lemma 1 of the same paper says its principal plane is a blind spot.
# Exits 0 when the scans ran, whatever they found; each scan's own exit code is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

MODELS=examples/models
if [ -f "$MODELS/mnist457_conv.pt" ] && [ -f "$MODELS/mnist457_normal.npy" ]; then
    echo "demo: using the model trained before in $MODELS (delete it to retrain)"
else
    echo "demo: training the MNIST {4,5,7} example (about a minute)"
    .venv/bin/python examples/train_mnist.py --out "$MODELS" --seed 0
fi

echo "demo: aeaudit scan $MODELS/mnist457_conv.pt --data $MODELS/mnist457_normal.npy --out aeaudit-out"
status=0
.venv/bin/aeaudit scan "$MODELS/mnist457_conv.pt" --data "$MODELS/mnist457_normal.npy" --out aeaudit-out || status=$?
case $status in
    0) echo "demo: scan exit code 0: PASS, no blind spot at or above the gate (see the verdict for warnings)" ;;
    1) echo "demo: scan exit code 1: verified blind spots found (a CI gate would fail here)" ;;
    4) echo "demo: scan exit code 4: inconclusive, the time limit cut the work short (a slow machine?)" ;;
    *) echo "demo: scan failed with exit code $status" >&2; exit "$status" ;;
esac
echo "demo: report written to $(pwd)/aeaudit-out/report.json (open report.html beside it in a browser)"

echo "demo: a linear autoencoder, which has a provable blind spot (a few seconds)"
.venv/bin/python examples/train_linear.py --out "$MODELS" --seed 0 >/dev/null
status=0
.venv/bin/aeaudit scan "$MODELS/linear_gd.pt" --data "$MODELS/linear_data.npy" --arch mlp:8,2,8 --effort quick \
    --out aeaudit-out/linear_gd || status=$?
case $status in
    1) echo "demo: scan exit code 1, as expected: report in $(pwd)/aeaudit-out/linear_gd/" ;;
    *) echo "demo: the linear autoencoder's scan exited $status; expected 1 (blind spots found)" >&2; exit 1 ;;
esac
