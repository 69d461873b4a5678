"""Evaluations, the effectful half: sampling, inline evaluation, benchmarks, Inspect AI. (Shell.)"""
