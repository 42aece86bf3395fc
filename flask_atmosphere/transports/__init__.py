"""The transports: each serves a client the endpoint (``endpoint.py``) has
opened or resumed, writing what its mailbox holds as the transport's wire
format wants it (§4 of ``atmosphere-protocol.md``).

``websocket`` (with the sans-IO frames of ``wsframes``), ``sse``,
``streaming`` (whose loop SSE shares) and ``longpolling`` (with JSONP);
``responses`` and ``sockets`` are what the HTTP ones share.
"""
