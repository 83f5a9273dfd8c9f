"""Evaluation of a frozen encoder: window embeddings (cached), shallow probes, Optuna tuning
(the only module importing optuna) and the scores (:mod:`benchmark.evaluation.metrics`, the one
definition of every metric, also used by ``reports``)."""
