"""Assemble training sets for ``dipair-rerank train``: topics + candidates + document texts (+ qrels) per set,
scored by the teacher set by set, then merged (ids prefixed by set when several sets are mixed, since
collections reuse ids: SciFact and MS MARCO both number their documents)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dipair_rerank.data import read_corpus, read_qrels, read_run, read_topics
from dipair_rerank.data.runs import Run
from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSetSpec:
    """One training set: ``topics``; ``candidates`` (a run) or ``index`` (BM25 over it); texts from ``corpus``
    or the index's stored contents; optional ``qrels``."""

    topics: str
    candidates: str | None = None
    corpus: str | None = None
    qrels: str | None = None
    index: str | None = None

    @staticmethod
    def zip(topics: Sequence[str], candidates: Sequence[str] | None, corpus: Sequence[str] | None,
            qrels: Sequence[str] | None, index: Sequence[str] | None = None) -> list["TrainSetSpec"]:
        def per_set(values: Sequence[str] | None, flag: str) -> list[str | None]:
            if values is None:
                return [None] * len(topics)
            if len(values) != len(topics):
                raise DiPairError(f"{flag} needs one value per --topics ({len(topics)}), got {len(values)}")
            return [None if value == "-" else value for value in values]  # "-": none for this set

        columns = zip(topics, per_set(candidates, "--candidates"), per_set(corpus, "--corpus"),
                      per_set(qrels, "--qrels"), per_set(index, "--index"))
        specs = [TrainSetSpec(t, c, d, q, i) for t, c, d, q, i in columns]
        for spec in specs:
            if spec.candidates is None and spec.index is None:
                raise DiPairError(f"training set {spec.topics}: give --candidates or --index (BM25 over it)")
            if spec.corpus is None and spec.index is None:
                raise DiPairError(f"training set {spec.topics}: give --corpus or --index for document texts")
        return specs


def _candidates(spec: TrainSetSpec, topics: dict[str, str], depth: int) -> Run:
    if spec.candidates is not None:
        run = read_run(spec.candidates)
        return {qid: hits[:depth] for qid, hits in run.items() if qid in topics}
    from dipair_rerank.first_stage import BM25FirstStage
    from dipair_rerank.index_layout import IndexLayout

    bm25 = BM25FirstStage(IndexLayout(Path(spec.index)).lucene)
    qids = list(topics)
    hits = bm25.retrieve(qids, [topics[q] for q in qids], depth, threads=2)
    return {qid: [(c.docid, c.score) for c in found] for qid, found in zip(qids, hits)}


def load_texts(spec: TrainSetSpec, docids: set[str]) -> dict[str, str]:
    """Text of each of ``docids``, from the set's corpus or its index's stored contents (all must exist)."""
    if spec.corpus is not None:
        texts = {doc.docid: doc.text for doc in read_corpus(spec.corpus) if doc.docid in docids}
    else:
        from dipair_rerank._java import ensure_jvm
        from dipair_rerank.data.lucene import stored_text
        from dipair_rerank.index_layout import IndexLayout

        ensure_jvm()
        from pyserini.search.lucene import LuceneSearcher

        searcher = LuceneSearcher(str(IndexLayout(Path(spec.index)).lucene.resolve()))
        texts = {}
        for docid in docids:
            doc = searcher.doc(docid)
            text = None if doc is None else stored_text(doc.raw(), doc.contents())
            if text is not None:
                texts[docid] = text
    missing = docids - texts.keys()
    if missing:
        raise DiPairError(f"training set {spec.topics}: {len(missing)} candidate docid(s) have no text, "
                          f"e.g. {sorted(missing)[0]}")
    return texts


def prepared_set_texts(sets_dir: str | Path) -> tuple[list[str], list[str]]:
    """Queries and candidate-document texts of every prepared training set under ``sets_dir`` (one folder per
    set with topics.tsv, candidates.trec and corpus/, as eval/recipe/prepare_train_data.py writes them)."""
    queries: list[str] = []
    docs: list[str] = []
    for folder in sorted(Path(sets_dir).iterdir()):
        topics = read_topics(folder / "topics.tsv")
        run = read_run(folder / "candidates.trec")
        queries += [topics[q] for q in run]
        spec = TrainSetSpec(str(folder / "topics.tsv"), corpus=str(folder / "corpus"))
        docs += list(load_texts(spec, {d for hits in run.values() for d, _ in hits}).values())
    return queries, docs


def _prefixed(run: Run, prefix: str) -> Run:
    return {prefix + qid: [(prefix + d, s) for d, s in hits] for qid, hits in run.items()}


def teacher_pairs(sets: Sequence[TrainSetSpec], build, *, negatives: int, negative_depth: int,
                  seed: int) -> dict[str, list]:
    """Cross-encoder training pairs of every set (``build`` is ``teachers.build_pairs``), concatenated."""
    merged: dict[str, list] = {"query": [], "passage": [], "label": []}
    for spec in sets:
        topics = read_topics(spec.topics)
        run = _candidates(spec, topics, negative_depth)
        qrels = read_qrels(spec.qrels) if spec.qrels else {}
        wanted = {d for hits in run.values() for d, _ in hits} | {d for docs in qrels.values() for d in docs}
        texts = _texts_available(spec, wanted)
        pairs = build(topics, qrels, run, texts, negatives=negatives, negative_depth=negative_depth, seed=seed)
        for column, values in pairs.items():
            merged[column].extend(values)
    return merged


def _texts_available(spec: TrainSetSpec, docids: set[str]) -> dict[str, str]:
    """Texts of the ``docids`` the corpus has (qrels may judge documents outside a pooled corpus)."""
    return {doc.docid: doc.text for doc in read_corpus(spec.corpus) if doc.docid in docids}


def _teachers(spec: str | Sequence[str], count: int) -> list[str]:
    """One teacher per set: a single value applies to every set (cross-encoders); ``run:`` files name qids of
    one collection, so mixed sets give one per set."""
    values = [spec] if isinstance(spec, str) else list(spec)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise DiPairError(f"--teacher needs one value, or one per --topics ({count}), got {len(values)}")
    return values


def _config_overrides(pairs: Sequence[str] | None) -> dict[str, object]:
    """``key=value`` pairs (``--set proj_dim=64``) typed by the DiPairConfig field they name."""
    from dataclasses import fields

    from dipair_rerank.model import DiPairConfig

    types = {f.name: f.type for f in fields(DiPairConfig)}
    values: dict[str, object] = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep or key not in types:
            raise DiPairError(f"--set {pair!r}: expected KEY=VALUE with KEY a DiPairConfig field")
        kind = str(types[key])
        try:
            if "list" in kind:  # comma-separated: --set channels=first_stage,lexical
                item = int if "int" in kind else str
                values[key] = [item(v) for v in text.split(",") if v]
            elif "bool" in kind:
                values[key] = text.lower() in ("1", "true", "yes", "on")
            elif "int" in kind:
                values[key] = int(text)
            elif "float" in kind:
                values[key] = float(text)
            else:
                values[key] = text
        except ValueError as exc:
            raise DiPairError(f"--set {pair!r}: {text!r} is not a valid {kind}") from exc
    return values


def starting_model(model: str | None, overrides: Sequence[str] | None, fresh: bool):
    """The student to train: a fresh seeded DiPair (``fresh``, or ``--set`` without ``--model``),
    ``load_model(model)``, or with ``--model`` and ``--set`` that model's config changed and its weights kept where
    they still fit (e.g. channels added to the shipped model: the new channel weights start at 0)."""
    import dataclasses

    from dipair_rerank.model import DiPairConfig, DiPairModel, load_model

    values = _config_overrides(overrides)
    if fresh or (values and model is None):
        if model is not None:
            raise DiPairError("--fresh starts from a seeded model: drop --model")
        return DiPairModel(DiPairConfig(**values))
    loaded = load_model(model)
    if not values:
        return loaded
    changed = DiPairModel(dataclasses.replace(loaded.config, **values))
    missing, _ = changed.load_state_dict(loaded.state_dict(), strict=False)
    logger.info("--set on %s: weights kept, new: %s", model, ", ".join(missing) or "none")
    return changed


def load_sets(sets: Sequence[TrainSetSpec], teachers: Sequence[str], *, depth: int, cache_dir: Path,
              device: str = "cpu") -> tuple[dict[str, str], Run, dict[str, str], Run, dict[str, dict[str, int]],
                                            dict[str, str]]:
    """Every set's topics, top-``depth`` candidates, texts, teacher scores and qrels, merged with ids prefixed
    by set number when there are several; plus qid -> set number (for per-set validation splits)."""
    from dipair_rerank.train import score_candidates

    topics: dict[str, str] = {}
    candidates: Run = {}
    texts: dict[str, str] = {}
    teacher: Run = {}
    qrels: dict[str, dict[str, int]] = {}
    group: dict[str, str] = {}
    for number, (spec, teacher_spec) in enumerate(zip(sets, teachers, strict=True)):
        prefix = f"{number}:" if len(sets) > 1 else ""
        set_topics = read_topics(spec.topics)
        set_candidates = _candidates(spec, set_topics, depth)
        set_texts = load_texts(spec, {d for hits in set_candidates.values() for d, _ in hits})
        set_teacher = score_candidates(teacher_spec, set_topics, set_candidates, set_texts,
                                       cache_dir=cache_dir, device=device)
        topics.update({prefix + q: t for q, t in set_topics.items()})
        candidates.update(_prefixed(set_candidates, prefix))
        teacher.update(_prefixed(set_teacher, prefix))
        texts.update({prefix + d: t for d, t in set_texts.items()})
        group.update({prefix + q: str(number) for q in set_candidates})
        if spec.qrels is not None:
            qrels.update({prefix + q: {prefix + d: r for d, r in docs.items()}
                          for q, docs in read_qrels(spec.qrels).items()})
        logger.info("set %s: %d queries, %d pairs", spec.topics, len(set_candidates),
                    sum(len(h) for h in set_candidates.values()))
    return topics, candidates, texts, teacher, qrels, group


def _cache_dir(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "cache_dir", None) or Path(args.output) / "teacher")


def run_training(sets: list[TrainSetSpec], args: argparse.Namespace) -> Path:
    """Score every set with the teacher, merge the sets and distil; returns the final model folder."""
    import torch

    from dipair_rerank.train import TrainConfig, train_dipair

    torch.set_num_threads(args.threads)
    output = Path(args.output)
    config = TrainConfig(output=output, depth=args.depth, stage1_epochs=args.stage1_epochs,
                         stage1_lr=args.stage1_lr, stage2_epochs=args.stage2_epochs, stage2_lr=args.stage2_lr,
                         queries_per_step=args.queries_per_step, loss=args.loss, device=args.device,
                         seed=args.seed, bf16=args.bf16, label_weight=args.label_weight)
    topics, candidates, texts, teacher, qrels, group = load_sets(
        sets, _teachers(args.teacher, len(sets)), depth=args.depth, cache_dir=_cache_dir(args), device=args.device)
    model = starting_model(args.model, getattr(args, "set", None), getattr(args, "fresh", False))
    if not getattr(args, "cached_stage1", False):
        train_dipair(model, topics, candidates, texts, teacher, config, qrels=qrels or None)
        return output / "model"
    return _run_cached(model, topics, candidates, texts, teacher, qrels, group, config, args)


def channel_values(model, examples, topics: dict[str, str], candidates: Run, texts: dict[str, str], queries,
                   docs, *, cache_dir: Path) -> dict[str, Any] | None:
    """qid -> the z-scores [k, channels] of its candidates (in the example's order) for a model with channels:
    the candidates' first-stage scores, lexical dot products (vectors cached in ``cache_dir``), and the cosines of
    the pooled vectors in the ``queries``/``docs`` feature stores (what the query tower and the cache give)."""
    import numpy as np

    from dipair_rerank.model.channels import COSINE, FIRST_STAGE, LEXICAL, channel_inputs
    from dipair_rerank.train.features import normalised_pooled

    channels = model.config.channels
    if not channels:
        return None
    used = {e.qid: candidates[e.qid] for e in examples}
    runs: dict[str, Run] = {FIRST_STAGE: used}
    if LEXICAL in channels:
        from dipair_rerank.train.teachers.splade import splade_scores

        runs[LEXICAL] = splade_scores(topics, used, texts, model=model.lexical.path, cache_dir=cache_dir)
    q_pooled, d_pooled = (normalised_pooled(queries), normalised_pooled(docs)) if COSINE in channels else (0, 0)
    out = {}
    for e in examples:
        values = {name: np.asarray([dict(run[e.qid])[d] for d in e.docids]) for name, run in runs.items()}
        if COSINE in channels:
            q_row = queries.rows([e.query])[0]
            values[COSINE] = d_pooled[docs.rows([texts[d] for d in e.docids])] @ q_pooled[q_row]
        out[e.qid] = channel_inputs(channels, [len(e.docids)], values)
    return out


def _run_cached(model, topics, candidates, texts, teacher, qrels, group, config, args) -> Path:
    """Stage 1 over cached features (validation split, early stopping), then optional stage 2 end to end on
    the training queries only."""
    import dataclasses

    from dipair_rerank.train import train_dipair
    from dipair_rerank.train.cached import (
        CachedStage1Config,
        doc_feature_layer,
        query_feature_layer,
        split_validation,
        train_stage1_cached,
    )
    from dipair_rerank.train.distill import build_examples
    from dipair_rerank.train.features import encoder_identity, extract_features
    from dipair_rerank.train.loop import replace_dir, write_json

    output = config.output
    examples = build_examples(topics, candidates, teacher, texts, depth=config.depth, qrels=qrels or None)
    fractions = list(args.val_fraction)  # one share for every set, or one per set
    if len(fractions) not in (1, len(set(group.values()))):
        raise DiPairError(f"--val-fraction needs one value, or one per --topics, got {len(fractions)}")
    split = fractions[0] if len(fractions) == 1 else {str(i): f for i, f in enumerate(fractions)}
    train, val = split_validation(examples, split, args.seed, group)
    logger.info("cached stage 1: %d training queries, %d validation queries", len(train), len(val))
    features = Path(args.features) if args.features else output / "features"
    mc = model.config
    q_keep, d_keep = max(mc.query_prefix, args.feature_keep[0]), max(mc.doc_prefix, args.feature_keep[1])
    tune_query = args.encoder_lr > 0
    layer = query_feature_layer(model, tune_query_layers=tune_query)  # tuned layers: store their input
    q_name = f"query-L{mc.query_max_length}-k{q_keep}" if layer is None else f"query-L{mc.query_max_length}-in{layer}"
    if mc.query_tuned_layers > 0:  # a trained tower's own outputs, or the states its tuned layers read
        q_name += f"-{encoder_identity(model, 'query', layer)}"
    queries = extract_features(model, [e.query for e in examples], features / q_name, side="query",
                               keep=q_keep if layer is None else mc.query_max_length, layer=layer)
    d_layer = doc_feature_layer(model)  # a tuned document top layer: store its input, every token
    d_name = f"doc-L{mc.doc_max_length}-k{d_keep}" if d_layer is None else f"doc-L{mc.doc_max_length}-in{d_layer}"
    docs = extract_features(model, list(dict.fromkeys(texts[d] for e in examples for d in e.docids)),
                            features / d_name, side="doc", keep=d_keep if d_layer is None else mc.doc_max_length,
                            layer=d_layer)
    stage1 = CachedStage1Config(epochs=args.stage1_epochs, lr=args.stage1_lr, encoder_lr=args.encoder_lr,
                                queries_per_step=args.queries_per_step,
                                sample_candidates=args.sample_candidates, loss=args.loss,
                                label_weight=args.label_weight, val_fraction=fractions if len(fractions) > 1 else fractions[0],
                                patience=args.patience, bf16=args.bf16, seed=args.seed, device=args.device)
    channels = channel_values(model, examples, topics, candidates, texts, queries, docs,
                              cache_dir=_cache_dir(args))
    summary = train_stage1_cached(model, train, val, queries, docs, texts, stage1, output=output, group=group,
                                  channels=channels)
    write_json(output / "stage1-summary.json", {k: v for k, v in summary.items() if k != "history"})
    if config.stage2_epochs > 0:
        keep = {e.qid for e in train}
        train_dipair(model, {q: t for q, t in topics.items() if q in keep},
                     {q: h for q, h in candidates.items() if q in keep}, texts, teacher,
                     dataclasses.replace(config, stage1_epochs=0), qrels=qrels or None)
        return output / "model"
    final = output / "model"
    tmp = final.with_name(final.name + ".tmp")
    model.save_pretrained(tmp, save_encoder=False)  # head + projections (+ tuned query layers as a delta)
    replace_dir(tmp, final)
    return final
