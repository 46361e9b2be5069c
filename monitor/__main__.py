import os
import sys
if os.environ.get("SWI"):
    sys.setswitchinterval(float(os.environ["SWI"]))

from monitor.cli import main

sys.exit(main())
