"""Everything below the filesystem, usable without FUSE: format, read engine, backends, publishing.

Layers, lowest first: ``errors``/``sizes``/``stats``/``config``/``seen`` → ``backends`` → ``format`` →
``read``/``keyring`` → ``sealed_catalog`` → ``publish``/``library`` → ``api`` → ``gc``/``access``. A module
imports only from its own layer or the ones below; never FUSE.
"""
