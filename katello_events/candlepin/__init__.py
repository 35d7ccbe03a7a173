"""The Candlepin listener's parts, one job each (the handler in ``handlers/candlepin.py`` puts
them together):

- ``settings``: the slot's OPTIONS, parsed and validated (no I/O);
- ``message``: what a message handler receives, and how a frame's body becomes one;
- ``connection``: stomp.py glue (one connection, its subscription, acks);
- ``diagnosis``: why a connection failed, where stomp.py does not say;
- ``dispatch``: subject -> message handler, and what becomes of a message that fails;
- ``depth``: the optional queue-depth probe.

Only ``settings`` and ``message`` are safe to import before Django's app registry is ready.
"""
