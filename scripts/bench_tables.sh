#!/usr/bin/env bash
# The README's table figures: wine quality (red and white, 5 seeds, six models) and California / Boston housing
# (linear, MLP, FT-Transformer, random forest, gradient boosting), each a Hydra multirun whose summary.md holds the
# mean ± std; wall time per job from its manifest. (A swept experiment= needs its data= on the command line too:
# Hydra checks the other overrides against the config without the swept one.) Usage: bash scripts/bench_tables.sh [results dir]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/bench_tables}
PY=${PYTHON:-.venv/bin/python}
DATA=${ATTNLAB_DATA_DIR:-../shared/data}
export ATTNLAB_DATA_DIR=$DATA ATTNLAB_RESULTS_DIR=$OUT
Q="trainer.enable_progress_bar=false trainer.enable_model_summary=false tracker=csv"
lscpu | grep -E "Model name|Flags" | sed -E 's/(Flags:).*(avx512[a-z_0-9]*|avx2).*/\1 \2 .../' | head -2
for colour in red white; do
  $PY app/train.py -m data=wine_quality experiment=wine_logreg,wine_mlp,wine_rf,wine_gbt,wine_bagging,wine_stacking seed=1,2,3,4,5 \
    "data.files=[$DATA/wine_quality/winequality-$colour.csv]" hydra.sweep.dir=$OUT/wine_$colour $Q
done
$PY app/train.py -m data=california_housing experiment=california_linear,california_mlp,california_ft_transformer,california_rf,california_gbt \
  seed=1 hydra.sweep.dir=$OUT/california $Q
# Boston (506 rows): 5-fold, the folds folded like seeds; the California recipes' models on Boston's table
$PY app/train.py -m data=boston_housing experiment=boston_mlp,california_linear,california_rf,california_gbt \
  data.folds=5 data.fold=0,1,2,3,4 seed=1 hydra.sweep.dir=$OUT/boston $Q
$PY scripts/table_times.py $OUT
