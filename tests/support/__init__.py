"""Test harness: lab host kinds, private mounts, the DNS and VPN labs, fault sweeps, engine drivers."""
