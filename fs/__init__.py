"""A thin FUSE adapter (mfusepy on libfuse3) over ``modelfs.store``: paths → readers, mounting.

May import ``modelfs.store`` (its ``api``, ``read`` and ``errors``) and mfusepy; no codec, crypto or
backend logic lives here.
"""
