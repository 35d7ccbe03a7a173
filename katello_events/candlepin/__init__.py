"""The Candlepin listener's parts, one job each (the handler in ``handlers/candlepin.py`` puts
them together):

- ``options``: the slot's OPTIONS, parsed and validated (no I/O);
- ``message``: what a message handler receives, and how a frame's body becomes one;
- ``connection``: stomp.py glue (one connection, its subscription, acks);
- ``diagnosis``: why a connection failed, where stomp.py does not say;
- ``dispatch``: what becomes of each message: sorted on arrival, then ignored, handled, stored
  for the event queue (failed, or delivered before) or kept dead;
- ``recent``: the message ids received lately (a delivery seen before is a redelivery);
- ``burst``: the messages waiting, run in one fenced transaction, one by one after a failure;
- ``depth_probe``: the optional queue-depth probe on the broker's management API.

Only ``options`` and ``message`` are safe to import before Django's app registry is ready.
"""
