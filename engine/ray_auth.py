"""Whether connecting to a Ray head is safe: the worker's Ray backend and a search's parallel trials
both connect through ``RAY_ADDRESS`` and refuse an unauthenticated remote head."""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import psutil


def unauthenticated_remote(address: str | None, auth_mode: str | None) -> str | None:
    """Why connecting to ``address`` (``RAY_ADDRESS``) is unsafe, or None. A head that is not on this
    machine is reached over the network, where anyone who can reach its port may run code on the
    cluster unless Ray's token authentication is on (``RAY_AUTH_MODE=token``)."""
    if not address or address.strip().lower() in ("auto", "local") or (auth_mode or "").lower() == "token":
        return None
    text = address.strip()
    host = urlsplit(text if "://" in text else f"//{text}").hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback or host in own_addresses()
    except ValueError:  # a host name other than localhost: may resolve anywhere
        local = False
    if local:
        return None
    return (f"RAY_ADDRESS {address} is not on this machine and Ray's token authentication is off: anyone who "
            "can reach that port could run code on the cluster. Start the head with RAY_AUTH_MODE=token and set "
            "RAY_AUTH_MODE=token (with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN) here too; "
            "see README, Running on a Ray cluster")


def own_addresses() -> set[str]:
    """This machine's interface addresses: a head started here by ``ray.init()`` announces one of them."""
    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family in (socket.AF_INET, socket.AF_INET6)}
