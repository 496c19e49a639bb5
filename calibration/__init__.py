"""Profiling runs of the user's training and fitting of the speedup model -> profile.yaml."""
