from llmtpu.cli import main

raise SystemExit(main())
