"""The ``modelfs`` command line: each command parses arguments and calls ``store``/``fs``/``bench``.

Nothing below imports from here.
"""
