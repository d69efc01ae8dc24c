// cniclient: a small CNI runtime on libcni, the library podman, containerd and CRI-O use,
// for nsrun's CNI tests (tests/lab/test_cni.py): an outside judge of the plugin. Built at
// test time (tests/support/cnilab.py), never committed built:
//
//	GO111MODULE=off GOPATH=DIR:/usr/share/gocode go build -o DIR/cniclient cniclient.go
//
// Usage: cniclient add|check|del CONFDIR NETWORK CONTAINERID NETNS IFNAME
//
// It loads the network list NETWORK from CONFDIR (libcni.LoadConfList: a .conflist, or a
// single plugin's .conf), finds plugins on CNI_PATH and keeps libcni's cache of Results in
// CNI_CACHE_DIR (never the machine's /var/lib/cni); CNI_CAPABILITY_ARGS (JSON, optional) are
// the runtime's capability arguments (portMappings...). ADD prints the Result as JSON on stdout;
// an error is printed on stderr, exit status 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) != 7 {
		fmt.Fprintln(os.Stderr, "usage: cniclient add|check|del CONFDIR NETWORK CONTAINERID NETNS IFNAME")
		os.Exit(2)
	}
	verb, confdir, network, container, netns, ifname := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6]
	cache := os.Getenv("CNI_CACHE_DIR")
	if cache == "" || !filepath.IsAbs(cache) {
		fmt.Fprintln(os.Stderr, "cniclient: CNI_CACHE_DIR must name an absolute directory")
		os.Exit(2)
	}
	list, err := libcni.LoadConfList(confdir, network)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cniclient: loading %s from %s: %v\n", network, confdir, err)
		os.Exit(1)
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(os.Getenv("CNI_PATH"), ":"), cache, nil)
	rt := &libcni.RuntimeConf{ContainerID: container, NetNS: netns, IfName: ifname}
	if caps := os.Getenv("CNI_CAPABILITY_ARGS"); caps != "" {
		if err := json.Unmarshal([]byte(caps), &rt.CapabilityArgs); err != nil {
			fmt.Fprintf(os.Stderr, "cniclient: CNI_CAPABILITY_ARGS: %v\n", err)
			os.Exit(2)
		}
	}
	ctx := context.Background()
	switch verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cniclient: ADD: %v\n", err)
			os.Exit(1)
		}
		if err := result.Print(); err != nil {
			fmt.Fprintf(os.Stderr, "cniclient: printing the Result: %v\n", err)
			os.Exit(1)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fmt.Fprintf(os.Stderr, "cniclient: CHECK: %v\n", err)
			os.Exit(1)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fmt.Fprintf(os.Stderr, "cniclient: DEL: %v\n", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "cniclient: unknown verb %q\n", verb)
		os.Exit(2)
	}
}
