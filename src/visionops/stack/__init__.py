"""``visionops stack``: PostgreSQL, an MLflow tracking server and a Prefect server with work pools
on 127.0.0.1, data under ``.stack/``, for running the pipeline the way a team does (docs/DEPLOY.md).

Modules: :mod:`.state` (``.stack/`` layout, ``state.json``), :mod:`.procs` (detached processes,
ports, ownership checks), :mod:`.postgres`, :mod:`.services` (MLflow, Prefect, workers),
:mod:`.deploy` (pools and deployments), :mod:`.lifecycle` (up / down / status).
"""
