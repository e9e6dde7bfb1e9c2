"""A relay link, header and channel secret as the channel tests use them."""

from relay.channels import Header
from relay.link import PathLink

SECRET = bytes.fromhex("5f1c" * 16)
"""uav-0's pre-shared secret (the link of make_link)."""
HEADER = Header(run_id="run-7", server_round=3, node_id=2**63 + 11, direction="up")


def make_link(fidelity: float = 0.97, hops: int = 2) -> PathLink:
    """A path with the given end-to-end fidelity, as the topology would report it."""
    return PathLink(
        uav_id="uav-0",
        server_round=HEADER.server_round,
        path=("uav-0", *(f"relay-{index}" for index in range(hops - 1)), "bs"),
        hop_link_types=("uav-hap",) * hops,
        hop_distances_km=(10.0,) * hops,
        hop_fidelities=(fidelity,) * hops,
        end_to_end_fidelity=fidelity,
        success_probability=0.01,
        pair_rate_hz=1000.0,
        waiting_time_s=1e-3,
        propagation_delay_s=2e-4,
        latency_s=1.2e-3,
        classical_rate_bps=1e8,
    )
