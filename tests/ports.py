"""Free loopback ports for the servers tests start, chosen where nothing else will take them.

A port the OS hands out for ``bind(0)`` lies in the ephemeral range, which
every outgoing connection on the machine also draws from: between choosing a
port and a server binding it (or across a server's restart on the same port),
some client's connection can take it. Ray's workers bind 10002-19999. So ports
are drawn at random from 20000 up to the start of the ephemeral range, and
checked free.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"
LOWEST = 20000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_ports(count: int, *, partner_offset: int = 0) -> list[int]:
    """``count`` distinct free ports ``p``; with ``partner_offset``, ``p + partner_offset`` is free too."""
    top = _ephemeral_start() - partner_offset
    if top <= LOWEST + count:
        raise RuntimeError(f"no room for {count} ports below the ephemeral range ({top + partner_offset})")
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            port = random.randrange(LOWEST, top)
            wanted = [port, port + partner_offset] if partner_offset else [port]
            probes = []
            try:
                for candidate in wanted:
                    probe = socket.socket()
                    probes.append(probe)
                    probe.bind((HOST, candidate))
            except OSError:
                for probe in probes:
                    probe.close()
                continue
            held.extend(probes)
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def free_port() -> int:
    """One free port (see the module docstring for where it comes from)."""
    return free_ports(1)[0]
