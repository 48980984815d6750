"""The read engine: the byte-bounded shard cache, the reader of one version with its readahead.

May import ``modelfs.store.format``, ``backends.base``, ``errors`` and ``stats``; never a concrete
backend, publishing or FUSE.
"""
