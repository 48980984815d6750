"""modelfs storage nodes: the replicated client backend, placement, the wire protocol, the server.

The client side (``replicated``, ``placement``, ``protocol``) never imports ``server`` (aiohttp),
so a mount daemon of a node store does not load it. May import ``backends.base``/``layout``/``local``.
"""
