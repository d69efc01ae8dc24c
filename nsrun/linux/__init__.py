"""Thin Linux wrappers: syscalls, netlink, network namespaces, sysctls, ARP, x_tables, cgroups."""
