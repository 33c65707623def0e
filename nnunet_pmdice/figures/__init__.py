"""Figures drawn from trained models (matplotlib, PNG)."""
