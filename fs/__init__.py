"""A thin FUSE adapter over ``modelfs.store``."""
