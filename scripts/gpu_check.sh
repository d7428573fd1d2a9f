#!/usr/bin/env bash
# The GPU check, one command on a machine with a CUDA GPU; each phase has a time limit, 7.5 minutes in all:
#   1. the environment: python, torch and its CUDA, lightning, the GPU(s)
#   2. tinystories_gpt at GPT-2 small's shape (12 x 768, context 1024) in bf16, eager and compile=true:
#      tokens/s and model FLOPs utilisation (scripts/gpu_bench.py)
#   3. experiment=mnist_cnn trainer=gpu for one epoch, through app/train.py
#   4. the test suite's GPU tests (pytest -m gpu)
# Without a CUDA GPU it stops at once (exit 2). Data: $ATTNLAB_DATA_DIR, else ../shared/data next to the repo; a
# data set missing there is replaced by generated data of the same format (said in the output).
#
#   bash scripts/gpu_check.sh            (PYTHON=<interpreter> to choose one; default python3)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's package, installed or not
cd "$REPO"

"$PY" - <<'EOF' || exit 2
import sys
try:
    import torch
except ImportError as err:
    sys.exit(f"gpu_check: cannot import torch ({err}); install the requirements: python3 -m pip install -r requirements.txt")
if not torch.cuda.is_available():
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    sys.exit(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} ({build}); run it on a machine with an "
             "NVIDIA GPU, its driver and a CUDA build of torch (pip install torch from the default index)")
EOF

WORK="$(mktemp -d "${TMPDIR:-/tmp}/attnlab-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export ATTNLAB_RESULTS_DIR="$WORK/results" ATTNLAB_CACHE_DIR="$WORK/cache"
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
declare -a SUMMARY=()
FAILED=0

phase() {  # phase <name> <timeout s> <command ...>: run it, time it, remember how it ended
    local name="$1" limit="$2" start=$SECONDS status
    shift 2
    echo
    echo "== $name"
    timeout "$limit" "$@"
    status=$?
    if [ $status -eq 0 ]; then SUMMARY+=("ok      $name ($((SECONDS - start)) s)")
    else SUMMARY+=("FAILED  $name (exit $status$([ $status -eq 124 ] && echo ", over ${limit} s"), $((SECONDS - start)) s)"); FAILED=1; fi
}

echo "== environment"
"$PY" - <<'EOF'
import platform, subprocess
import lightning, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version()}), lightning {lightning.__version__}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=20).stdout.split()
    print(f"driver {driver[0] if driver else '?'}")
except (OSError, subprocess.TimeoutExpired):
    print("driver: nvidia-smi not found")
EOF
echo "attnlab at $REPO, commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"

DATA="${ATTNLAB_DATA_DIR:-$REPO/../shared/data}"
if [ -f "$DATA/tinystories_sample/validation_head.txt.gz" ] || [ -f "$DATA/tinystories_sample/validation_head.txt" ]; then
    STORIES="$DATA"; echo "stories: $DATA/tinystories_sample (the real TinyStories sample)"
else
    STORIES="$WORK/data"; mkdir -p "$STORIES/tinystories_sample"
    "$PY" -c "import sys; from pathlib import Path; from attnlab.data.corpus import write_fake_corpus
write_fake_corpus(Path(sys.argv[1]) / 'tinystories_sample' / 'validation_head.txt.gz', n_docs=20000)" "$STORIES"
    echo "stories: GENERATED (no tinystories_sample under $DATA): throughput is real, the text is not"
fi
if [ -f "$DATA/mnist/train-images-idx3-ubyte.gz" ] || [ -f "$DATA/mnist/train-images-idx3-ubyte" ]; then
    MNIST="$DATA/mnist"; echo "mnist: $MNIST (real)"
else
    MNIST="$WORK/data/mnist"
    "$PY" -c "import sys; from attnlab.data.mnist import write_fake_mnist; write_fake_mnist(sys.argv[1], n_train=20000, n_test=2000)" "$MNIST"
    echo "mnist: GENERATED (no mnist under $DATA): 20,000 train / 2,000 test synthetic images, accuracy means little"
fi

phase "tinystories_gpt, gpt_small, bf16: eager and compiled" 270 \
    "$PY" scripts/gpu_bench.py --data-dir "$STORIES" --steps 60 --warmup 15 --batch-size 16 --max-len 1024
phase "experiment=mnist_cnn trainer=gpu, one epoch" 90 \
    "$PY" app/train.py experiment=mnist_cnn trainer=gpu trainer.max_epochs=1 "data.data_dir=$MNIST" \
    trainer.enable_progress_bar=false tracker=csv
for metrics in "$ATTNLAB_RESULTS_DIR"/runs/*/metrics.json; do
    [ -f "$metrics" ] && "$PY" -c "import json, sys; m = json.load(open(sys.argv[1]))
print('  ' + ', '.join(f'{k} {v:.4g}' for k, v in sorted(m.items()) if k.split('/')[-1] in ('acc', 'loss', 'epoch_time_s', 'samples_per_sec')))" "$metrics"
done
phase "pytest -m gpu" 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests

echo
echo "== summary"
printf '  %s\n' "${SUMMARY[@]}"
exit $FAILED
