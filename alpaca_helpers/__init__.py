"""Tested helpers for the Alpaca course: every notebook imports its logic from here."""

__version__ = "0.1.0"
