"""The CNI plugin, type "nsrun" (`nsrun-cni`, installed as `nsrun` in the CNI plugin
directories): nsrun profiles as CNI networks for podman, containerd, CRI-O, Kubernetes
(through Multus) and Nomad. A thin entry layer beside the command line:

    nsrun/cni/plugin.py   main: read the config and CNI_* variables, call the engine
                          (nsrun.engine.attachment), print the Result or error object
    nsrun/cni/netconf.py  the network configuration and the environment, validated
    nsrun/cni/results.py  Results per spec version, prevResult, error and VERSION objects

The contract (spec 1.0.0, with 1.1.0's GC and STATUS) and the error codes: docs/cni.md.
"""
