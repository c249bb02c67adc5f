from ai_engine.cli import main

raise SystemExit(main())
