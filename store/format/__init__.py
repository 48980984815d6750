"""The stored format: byte grouping + zstd (codec), keys and AEAD (crypto), manifests, the catalog,
key files, host key wrapping and publisher signatures (keyfiles, recipients), sealed envelopes.

May import ``modelfs.store.errors``, ``sizes`` and ``backends.base`` (records and the object
interface); knows nothing of caching, FUSE or a particular backend.
"""
