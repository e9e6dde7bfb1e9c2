"""Relay layer: SAGIN topology, closed-form link physics and pluggable channels.

- :mod:`relay.physics`: Werner/Bell-diagonal algebra, loss, waiting time,
  latency, teleportation and BB84 formulas (pure numpy, with sources).
- :mod:`relay.topology`: the SAGIN description file, mobility and per-round
  UAV paths (:func:`relay.topology.load_topology`).
- :mod:`relay.bb84`: bit-level BB84 emulation behind the ``qkd`` channel.
- :mod:`relay.channels`: the ``Channel`` interface, registry and the
  ``ideal``, ``teleport`` and ``qkd`` channels.
"""
