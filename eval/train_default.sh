#!/usr/bin/env bash
# Reproduces the shipped default model (dipair_rerank/model/shipped/) from the shared data, on CPU.
# Training data (issue 3): SciFact TRAIN queries + SciFact title pseudo-queries over the SciFact corpus; DL21
# (graded qrels) and DL22 queries with their BM25 runs; MS MARCO dev-subset queries against the DL21+DL22
# passage pools. Never SciFact test, never DL19. Every step is idempotent/resumable; work files go to
# eval/work/ (git-ignored). Wall time on 2 cores: ~25 min features, ~3 min teacher, ~25 min stage 1.
# THREADS=1 when another job shares the CPU (2 torch threads on 1 free core run 4x slower).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
W=eval/work/train
S=$W/sets
F=eval/work/features
E=eval/work/embeddings
D=${DIPAIR_DATA:-../shared/data}

# 1. training sets: topics, BM25 top-30 candidates, qrels where they exist (symlinked corpora)
python eval/prepare_train_data.py --work $W --depth 30

# 2. frozen-encoder features of every training query/document (stage-1 inputs; m<=16, n<=32 for the ablation)
python eval/extract_train_features.py --sets $S --features $F

# 3. the bi-encoder teacher's embeddings are the same mean-pooled MiniLM outputs: seed its cache (verified)
python eval/seed_biencoder_cache.py --features $F --sets $S --cache $E

# 4. fusion teacher weights, fitted per domain on TRAINING qrels: DL21 (BM25 top-100) and SciFact train (top-30)
mkdir -p $W/teacher
dipair-rerank teacher-scores --topics $D/msmarco-v2-dl21/queries.tsv --candidates $D/msmarco-v2-dl21/runs/bm25.top100.trec \
    --corpus $S/dl21/corpus --fit-qrels $D/msmarco-v2-dl21/qrels.txt --output $W/teacher/fit-dl21.trec --cache-dir $E
dipair-rerank teacher-scores --topics $S/scifact-train/topics.tsv --candidates $S/scifact-train/candidates.trec \
    --corpus $S/scifact-train/corpus --fit-qrels $S/scifact-train/qrels.txt --output $W/teacher/fit-scifact.trec --cache-dir $E
python - <<PY
import json
marco = json.load(open("$W/teacher/fit-dl21.trec.fit.json"))["scorers"]
sci = json.load(open("$W/teacher/fit-scifact.trec.fit.json"))["scorers"]
json.dump({"msmarco": marco, "scifact": sci}, open("eval/teacher.json", "w"), indent=2)
PY
cat eval/teacher.json

# 5. teacher scores for every training set (SciFact sets: SciFact weights; MS MARCO sets: DL21 weights)
for set in scifact-train scifact-titles dl21 dl22 marco-dev; do
  case $set in scifact-*) key=scifact ;; *) key=msmarco ;; esac
  weights=$(python -c "import json; print(json.load(open('eval/teacher.json'))['$key'])")
  dipair-rerank teacher-scores --topics $S/$set/topics.tsv --candidates $S/$set/candidates.trec \
      --corpus $S/$set/corpus --scorers "$weights" --output $W/teacher/$set.trec --cache-dir $E --depth 30
done

# 6. stage 1 over cached features: fresh default-shaped model, listwise KL (+ qrels term), 10% of every set's
#    queries held out, early stopping on validation nDCG@10
SETS="scifact-train scifact-titles dl21 dl22 marco-dev"
TOPICS=(); CANDS=(); CORPUS=(); QRELS=(); TEACH=()
for set in $SETS; do
  TOPICS+=($S/$set/topics.tsv); CANDS+=($S/$set/candidates.trec); CORPUS+=($S/$set/corpus)
  if [ -f $S/$set/qrels.txt ]; then QRELS+=($S/$set/qrels.txt); else QRELS+=(-); fi
  TEACH+=(run:$W/teacher/$set.trec)
done
dipair-rerank -v train --fresh --cached-stage1 --features $F --feature-keep 16 32 \
    --topics "${TOPICS[@]}" --candidates "${CANDS[@]}" --corpus "${CORPUS[@]}" --qrels "${QRELS[@]}" \
    --teacher "${TEACH[@]}" --output $W/default --depth 30 --loss kl --label-weight ${LABEL_WEIGHT:-0.1} \
    --stage1-epochs ${EPOCHS:-6} --stage1-lr 3e-4 --queries-per-step 32 --sample-candidates 16 --patience 2 \
    --val-fraction 0.1 --stage2-epochs 0 --seed 0 --bf16 --threads ${THREADS:-2}

# 7. ship it (head + projections + tokenizer; the encoder is the packaged MiniLM)
rm -rf dipair_rerank/model/shipped.tmp && cp -r $W/default/model dipair_rerank/model/shipped.tmp
rm -rf dipair_rerank/model/shipped && mv dipair_rerank/model/shipped.tmp dipair_rerank/model/shipped
du -sh dipair_rerank/model/shipped
