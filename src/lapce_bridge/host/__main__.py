import sys

from lapce_bridge.host.process import main

sys.exit(main())
