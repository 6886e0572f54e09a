"""Stages ``validate`` (scan every file, check the manifest with great-expectations) and
``split`` (stratified, hash-stable train/val/test); readers of their outputs.
"""
