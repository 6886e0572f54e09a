"""Stage ``register`` and the MLflow Model Registry: ``models:/`` URIs, champion/challenger
scoring, lineage of a version.
"""
