"""Everything below the filesystem: codec, crypto, manifest, catalog, backends, cache, reads."""
