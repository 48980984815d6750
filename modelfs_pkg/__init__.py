"""modelfs: large model files as compressed, encrypted shards, mounted as ordinary files."""
__version__ = "0.1.0"
