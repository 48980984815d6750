"""modelfs storage nodes: URL options, a one-node client, the replicated backend, placement, the server.

The client side (``options``, ``client``, ``listing``, ``replicated``, ``writer``, ``placement``,
``protocol``) never imports ``server*`` (aiohttp), so a mount daemon of a node store does not load it.
May import ``backends.base``/``layout``, ``errors``, ``config`` and ``stats``.
"""
