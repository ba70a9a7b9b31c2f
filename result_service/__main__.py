from result_service.main import main

raise SystemExit(main())
