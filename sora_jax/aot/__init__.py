"""Ahead-of-time compiles for TPU slices on any host: does a step fit, what does it move, how
fast could it run (`experiments/aot.py`)."""
