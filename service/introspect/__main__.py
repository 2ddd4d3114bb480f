"""`python -m introspect` runs the server (same as `introspect serve`)."""

import sys

from .server import main

sys.exit(main())
