"""Config files, one per model family: `get_config(arg)` returns an `ml_collections.ConfigDict`.

Scripts take them as `--config=configs/FILE.py:ARG`; Python code imports them as a package
(`from configs import wan21`, with the repository root on sys.path, as pytest has it) or loads
them from any working directory with `sora_jax.config_files.load('configs/wan21.py:tiny')`.
"""
