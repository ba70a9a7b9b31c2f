from scheduler_service.main import main

raise SystemExit(main())
