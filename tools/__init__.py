"""The ``modelfs`` command line."""
