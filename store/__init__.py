"""Everything below the filesystem, usable without FUSE: format, read engine, backends, publishing.

Layers, lowest first: ``errors``/``sizes``/``stats`` → ``backends`` → ``format`` → ``read`` →
``publish``/``gc``/``api``. A module imports only from its own layer or the ones below; never FUSE.
"""
