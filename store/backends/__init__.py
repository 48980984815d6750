"""Where stored bytes live: the interface (``base``), shared layout helpers, and each backend.

``local`` (a directory, NFS), ``nodes/`` (modelfs storage nodes), ``hdfs/``, ``memory`` (unit tests);
``urls`` picks one for a store URL. Backends move opaque, already-encrypted bytes: they may import
``errors``, ``sizes``, ``config`` and ``stats`` only, never the format or the read engine.
"""
