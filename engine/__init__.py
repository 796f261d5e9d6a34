"""Slimbench engine: compress image classifiers for real and measure them honestly.

Importable without Streamlit. Entry points: ``engine.validation.check_spec(dict) -> JobSpec``,
``engine.runner.run_spec(spec)`` and the CLI (``python -m engine``). Its modules import in layers,
top to bottom, as ``.importlinter`` states (settings: ``engine.settings``, docs/SETTINGS.md).
"""
__version__ = "0.1.0"
