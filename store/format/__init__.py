"""The stored format: byte grouping + zstd (codec), keys and AEAD (crypto), manifests, the catalog.

May import ``modelfs.store.errors``, ``sizes`` and ``backends.base`` (records and the object
interface); knows nothing of caching, FUSE or a particular backend.
"""
