"""Scorers equal to the reference implementations, one module per benchmark family."""
