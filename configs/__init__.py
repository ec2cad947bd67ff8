"""Experiment configs: one ``get_config()`` per file, loaded by ``main.py --config=configs/<file>.py``."""
