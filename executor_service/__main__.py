import sys

from executor_service.main import main

sys.exit(main())
