#!/bin/bash
# The GPU run that made train/masks/smollm2-135m-instruct (see train/README.md, "GPU run").
# Call 1 (bench.sh) left the GGUF's first half and a timing in /tmp/lk; this call brings the
# second half, rebuilds and converts the model, trains (steps sized to the time left), evaluates,
# and tars the results into $OUT. Budget: the whole command must end within ~9.5 minutes.
set -euo pipefail
export PYTHONUNBUFFERED=1
W=/tmp/lk
C=.cache/dev/c2
cat $W/gguf.part1 $C/gguf.part2 > $W/model.gguf
echo "gguf md5 $(md5sum $W/model.gguf | cut -c1-32) (expected a1231443440b107ff29f02bdb38c9d0a)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  $C/*.whl
mkdir -p .cache/models
PYTHONPATH=/tmp/site python3 tools/convert_smollm2.py --gguf $W/model.gguf \
  --out .cache/models/smollm2-135m-instruct > $W/convert.log 2>&1 || { cat $W/convert.log; exit 1; }
ln -sfn "$PWD/$C/data" .cache/leank
export PYTHONPATH=$PWD
# Steps from call 1's timing (stage 1: ~${T1:-200}s, stage 2: ~${T2:-75}s).
read S1 S2 < <(python3 - <<PY
import json
b = json.load(open("$W/bench.json"))
t1 = sum(b[k]["stage1"] for k in ("1024", "4096", "8192")) / 3 * 1.15
t2 = sum(b[k]["stage2"] for k in ("1024", "4096", "8192")) / 3 * 1.15
print(max(200, min(2000, int(${T1:-200} / t1) // 10 * 10)), max(60, min(400, int(${T2:-75} / t2) // 10 * 10)))
PY
)
echo "stage1 steps $S1, stage2 steps $S2"
python3 -m train.leank_train --config train/configs/smollm2.json \
  --set stage1.steps=$S1 --set stage2.steps=$S2 2>&1 | tee $W/train.out | grep -v "^stage" || true
tail -3 $W/train.out
EB=$(( ${TOTAL:-560} - SECONDS - 25 ))
echo "eval budget ${EB}s"
python3 -m train.leank_eval --config train/configs/smollm2-eval.json --set time_budget_s=$EB \
  2>&1 | tee $W/eval.out
cp $W/train.out $W/eval.out $W/convert.log train/masks/smollm2-135m-instruct/ 2>/dev/null || true
tar czf $OUT/results.tgz train/masks/smollm2-135m-instruct
echo "done in ${SECONDS}s"
