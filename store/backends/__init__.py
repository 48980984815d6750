"""Where stored bytes live: the interface (``base``), shared layout helpers, and each backend.

``local`` (a directory, NFS), ``nodes`` (modelfs storage nodes), ``hdfs``. Backends move opaque,
already-encrypted bytes: they may import ``errors``, ``sizes`` and ``stats`` only, never the format.
"""
