"""``python -m server.federation``: an alias of ``python -m deploy.federation``.

The code lives in ``deploy/`` (:mod:`deploy.federation` and the modules beside it); this
module only keeps the older command working, with the same output and exit code.
"""

import sys

from deploy.federation import main

if __name__ == "__main__":
    sys.exit(main())
