"""Everything below the filesystem, usable without FUSE: format, read engine, backends, publishing.

Layers, lowest first: ``errors``/``sizes``/``stats``/``config``/``seen`` → ``backends`` → ``format`` →
``read``/``keyring`` → ``sealed_catalog`` → ``publish``/``library`` → ``api`` → ``gc``/``access``/``scrub``.
A module imports only from its own layer or the ones below; never FUSE.
"""
import logging

# a library's records go where the application's logging sends them; none configured: nowhere
# (not Python's last-resort printing to the program's stderr)
logging.getLogger(__name__).addHandler(logging.NullHandler())
