"""``dipair-rerank serve``: re-rank and search over HTTP (FastAPI + uvicorn, ``pip install 'dipair-rerank[serve]'``).

    app.py       the endpoints (/rerank, /search, /health, /metrics, /admin/reload, /docs) and one-line JSON errors
    service.py   the index's re-ranker and first stage behind the batcher; ServeOptions
    batching.py  micro-batching on the one thread that runs torch and the JVM
    reload.py    SIGHUP / POST /admin/reload: a new build loaded aside, swapped in whole; refused if damaged
    server.py    uvicorn: warm before the port opens, SIGTERM drains and exits 0, dead workers replaced
    guard.py     the API key (401) and the body limit (413), checked before a body is read
    metrics.py   GET /metrics (Prometheus, all workers added up) and one access-log line per request
"""
