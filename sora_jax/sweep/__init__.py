"""Config sweeps: spec.py (override lists from sweeps, products and zips; run names), runner.py
(one subprocess of experiments/train.py per run, resumable), summary.py (CSV, Markdown, hparams)."""
