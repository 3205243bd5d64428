"""Benchmarks of the distillation losses: quality against full-logit KD, and cost against plain CE."""
