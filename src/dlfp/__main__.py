from dlfp.cli import main

raise SystemExit(main())
