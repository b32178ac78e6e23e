#!/usr/bin/env bash
# The retrieval model's evaluation (issue: "Proving quality"), as committed in README.md.
#   bash bench/eval.sh            # all parts, about 1.5 h on 2 cores
#   bash bench/eval.sh recall     # one part: recall | policies | curve | locret | book | keep | keep-ppl
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results/eval
export TOME_CACHE="$PWD/bench/results/eval/cache"
TOME="deno run --quiet --v8-flags=--optimize-for-size -A cli/main.ts"
MODEL=$OUT/retrieval
mkdir -p $OUT
[ -f $MODEL/config.json ] || $TOME make-model retrieval --out $MODEL --tokenizer ../shared/fixtures/smollm2-tokenizer
# DuoAttention head mask for the retrieval model: layer 1 (offset heads) streams, layer 2 (matching) retrieves
printf '0.0\n1.0\n' > $OUT/duo_mask.tsv
DEPTHS=0,10,20,30,40,50,60,70,80,90,100
part() { [ $# -eq 0 ] || [ "$1" = all ] || [ "$1" = "$2" ]; }
if part "${1:-all}" recall; then
  $TOME eval niah -m $MODEL --policy full --lengths 2048,8192,32768 --depths $DEPTHS --needles 3 --out $OUT/recall --json > $OUT/recall.json
fi
if part "${1:-all}" policies; then
  $TOME eval niah -m $MODEL --policy snapkv,streaming --budget 1024 --lengths 32768 --depths $DEPTHS --out $OUT/policies --json > $OUT/policies.json
fi
if part "${1:-all}" curve; then
  $TOME eval curve -m $MODEL --policy snapkv,pyramidkv,h2o,tova,corm,knorm,streaming,duo --duo-mask $OUT/duo_mask.tsv \
    --budget 256,512,1024,2048 --lengths 32768 --depths 0,25,50,75,100 --out $OUT/curve > $OUT/curve.txt
fi
if part "${1:-all}" locret; then
  # Locret with random (untrained) retaining heads: what the policy does without its training
  deno run --quiet -A bench/retaining_heads.ts $MODEL $OUT/retaining_heads.safetensors
  $TOME eval curve -m $MODEL --policy locret --retaining-heads $OUT/retaining_heads.safetensors \
    --budget 256,512,1024,2048 --lengths 32768 --depths 0,25,50,75,100 --out $OUT/locret > $OUT/locret.txt
fi
if part "${1:-all}" book; then
  $TOME eval niah -m $MODEL --policy snapkv --budget 4096 --positions compact --lengths 789000 --depths 0,25,50,75,100 \
    --out $OUT/book --json > $OUT/book.json
fi
if part "${1:-all}" keep; then
  # keep instead of drop: every method at equal KV bytes (budgets are sizes), one log, one table
  mkdir -p $OUT/keep && rm -f $OUT/keep/results.jsonl
  K="--lengths ${KEEP_LENGTHS:-32768} --depths 10,50,90 --budget ${KEEP_BUDGETS:-64KiB,256KiB} --positions original"
  K="$K --out $OUT/keep --no-plots -q"
  $TOME eval niah -m $MODEL --policy full,snapkv,h2o,tova --merge none,d2o,kvmerger,anchors $K > /dev/null
  $TOME eval niah -m $MODEL --policy ems $K > /dev/null
  $TOME eval niah -m $MODEL --policy snapkv,h2o,tova --key-channels 0.5 $K > /dev/null
  $TOME eval niah -m $MODEL --policy snapkv,h2o,tova --keep-evicted int4 $K > /dev/null
  $TOME eval niah -m $MODEL --policy snapkv,h2o,tova --keep-evicted int2 $K > /dev/null
  deno run --quiet -A bench/keep_table.ts $OUT/keep/results.jsonl --json $OUT/keep.json | tee $OUT/keep.txt
fi
if part "${1:-all}" keep-ppl; then
  # the same methods by perplexity on the random 360M-shaped model: how far each moves the distribution
  R360=$OUT/random-360m
  [ -f $R360/config.json ] || $TOME make-model tiny --size 360m --out $R360 --tokenizer ../shared/fixtures/smollm2-tokenizer
  # 9,500 bytes from 300 KB in (about 2.3K tokens)
  dd if=../shared/corpus/war_and_peace.txt of=$OUT/ppl_text.txt iflag=skip_bytes,count_bytes skip=300000 count=9500 status=none
  mkdir -p $OUT/keep-ppl && rm -f $OUT/keep-ppl/results.jsonl
  P="--text $OUT/ppl_text.txt --last 256 --budget ${KEEP_PPL_BUDGET:-10MiB} --positions original --out $OUT/keep-ppl -q"
  $TOME eval ppl -m $R360 --policy full,snapkv,h2o --merge none,d2o,kvmerger,anchors $P > /dev/null
  $TOME eval ppl -m $R360 --policy ems $P > /dev/null
  $TOME eval ppl -m $R360 --policy snapkv,h2o --key-channels 0.5 $P > /dev/null
  $TOME eval ppl -m $R360 --policy snapkv,h2o --keep-evicted int4 $P > /dev/null
  $TOME eval ppl -m $R360 --policy snapkv,h2o --keep-evicted int2 $P > /dev/null
  deno run --quiet -A bench/keep_table.ts $OUT/keep-ppl/results.jsonl --json $OUT/keep-ppl.json | tee $OUT/keep-ppl.txt
fi
