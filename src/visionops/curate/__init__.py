"""Curation: rank what a person should look at, and the two pages where they act on it.

``issues`` ranks suspected label errors and outliers from the trained model's embeddings
(cleanlab on out-of-sample probabilities); ``review_app`` walks that queue plus the
near-duplicate groups of ``validate`` and records decisions in ``curation.csv``
(:mod:`visionops.data.curation`); ``label_app`` is the Photo-Rater that turns a folder of
unlabeled images into new files under ``data/<class>/``. Guide: ``docs/CURATE.md``.
"""
