"""On top of the stages: the DVC stage runner used by the Prefect flow, data versioning, param
overrides, the run report and the demo summary.
"""
