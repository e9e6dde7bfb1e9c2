"""Relay layer: SAGIN topology, closed-form link physics and pluggable channels.

- :mod:`relay.physics`: Werner/Bell-diagonal algebra, loss, waiting time,
  latency, teleportation and BB84 formulas (pure numpy, with sources).
- :mod:`relay.topology`: the SAGIN network (:class:`relay.topology.Topology`) and
  per-round UAV paths, read from a description file by
  :func:`relay.topology_file.load_topology`; built on :mod:`relay.topology_spec`
  (what the file describes), :mod:`relay.mobility`, :mod:`relay.routing` and
  :mod:`relay.link` (:class:`relay.link.PathLink`, what a channel sees of a path).
- :mod:`relay.bb84`: bit-level BB84 emulation behind the ``qkd`` channel.
- :mod:`relay.channels`: the ``Channel`` interface, registry and the
  ``ideal``, ``teleport`` and ``qkd`` channels.
"""
