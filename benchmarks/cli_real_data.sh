#!/usr/bin/env bash
# The CLI on the real data: ISBI 2012 (train 0-14, validate 15-19) and DSB 2018 (sorted ids: last 20 validate).
#   benchmarks/cli_real_data.sh [WORK_FOLDER]     (default /tmp/clireal; reads ../shared/data beside the repo)
#   BUDGET=1200 benchmarks/cli_real_data.sh ...   (seconds of training per dataset; default 150)
# Train with the defaults (settings chosen from the labels; the whole budget, its schedule spread over it),
# predict the validation images with the model's own post-processing, score them with `evaluate`;
# the scores land in WORK_FOLDER/out/{isbi,dsb}_eval.json.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
D=$REPO/../shared/data; W=${1:-/tmp/clireal}; U=$REPO/.venv/bin/napari-unet
[ -d "$D/isbi2012" ] && [ -d "$D/dsb2018-fluo" ] || { echo "skipped: real data not found under $D"; exit 0; }
rm -rf $W/isbi $W/dsb $W/out; mkdir -p $W/isbi/{train,val}/{images,labels} $W/dsb/{train,val}/{images,labels} $W/out
for i in $(seq -w 0 19); do s=train; [ $((10#$i)) -ge 15 ] && s=val
  ln -s $D/isbi2012/train/images/$i.png $W/isbi/$s/images/$i.png; ln -s $D/isbi2012/train/labels/$i.png $W/isbi/$s/labels/$i.png; done
n=0; for f in $(ls $D/dsb2018-fluo/train/images | sort); do s=train; [ $n -ge 80 ] && s=val; n=$((n+1))
  ln -s $D/dsb2018-fluo/train/images/$f $W/dsb/$s/images/$f; ln -s $D/dsb2018-fluo/train/labels/$f $W/dsb/$s/labels/$f; done
start=$(date +%s)
$U train $W/isbi/train/images $W/isbi/train/labels --out $W/out/isbi.model --validation-images $W/isbi/val/images \
  --validation-labels $W/isbi/val/labels --time-budget ${BUDGET:-150} -q
echo "isbi train wall $(( $(date +%s) - start )) s"
$U predict $W/out/isbi.model $W/isbi/val/images --out $W/out/isbi_pred --probabilities -q
$U evaluate $W/out/isbi_pred $W/isbi/val/labels --kind isbi --json > $W/out/isbi_eval.json
start=$(date +%s)
$U train $W/dsb/train/images $W/dsb/train/labels --out $W/out/dsb.model --validation-images $W/dsb/val/images \
  --validation-labels $W/dsb/val/labels --time-budget ${BUDGET:-150} -q
echo "dsb train wall $(( $(date +%s) - start )) s"
$U predict $W/out/dsb.model $W/dsb/val/images --out $W/out/dsb_pred -q
$U evaluate $W/out/dsb_pred $W/dsb/val/labels --kind instances --json > $W/out/dsb_eval.json
echo done
