from nsrun.cli import main

raise SystemExit(main())
