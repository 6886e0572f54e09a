"""Stage ``evaluate``: test-set metrics (scikit-learn where it computes the same thing), plots,
the top-loss gallery.
"""
