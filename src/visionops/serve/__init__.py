"""``visionops serve``: the HTTP service (upload page, limits, alias reload) over the Predictor."""
