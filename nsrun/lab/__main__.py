"""`python -m nsrun.lab serve NETNS_PATH PORT | client [HOST]`: the lab's two programs."""

import sys

from nsrun.lab import main

raise SystemExit(main(sys.argv[1:]))
