"""Slimbench engine: compress image classifiers for real and measure them honestly.

Importable without Streamlit. Entry points: ``engine.runner.execute(JobSpec)`` and the CLI
(``python -m engine``).
"""
__version__ = "0.1.0"
