"""Cropped pseudo-queries: spans of the document's own words, no stop words at the edges, reproducible."""

from dipair_rerank.train.pseudo_queries import STOP_WORDS, cropped_queries

DOCUMENTS = [
    ("d1", "The mitochondria is the powerhouse of the cell. It produces energy for the body."),
    ("d2", "Aliens is a 1986 film directed by James Cameron. It stars Sigourney Weaver as Ripley."),
    ("d3", "Short."),  # no sentence long enough: no query
    ("d4", "Heat the oven to 200 degrees, then bake the bread for forty minutes until golden brown!"),
]


def test_each_query_is_a_trimmed_span_of_one_sentence_of_its_document():
    queries = cropped_queries(DOCUMENTS, count=10, seed=3)
    texts = dict(DOCUMENTS)
    assert set(queries) == {"crop-d1", "crop-d2", "crop-d4"}
    for qid, query in queries.items():
        words = query.split()
        source = texts[qid.removeprefix("crop-")].lower()
        assert 3 <= len(words) <= 8
        assert words[0] not in STOP_WORDS and words[-1] not in STOP_WORDS
        assert sum(word not in STOP_WORDS for word in words) >= 2
        assert any(" ".join(words) in " ".join(sentence.replace(",", "").replace(".", "").replace("!", "").split())
                   for sentence in source.split(". "))


def test_same_seed_same_queries_and_count_bounds_the_documents_drawn():
    assert cropped_queries(DOCUMENTS, count=10, seed=1) == cropped_queries(DOCUMENTS, count=10, seed=1)
    assert len(cropped_queries(DOCUMENTS, count=1, seed=1)) <= 1
    assert cropped_queries([], count=5) == {}
