"""Serving: a Predictor per backend, the dynamic batcher, and what /predict answers with."""
