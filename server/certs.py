"""``python -m server.certs``: an alias of ``python -m deploy.certs``.

The code lives in ``deploy/`` (:mod:`deploy.certs`); this module only keeps the older
command working, with the same output and exit code.
"""

from deploy.certs import main

if __name__ == "__main__":
    main()
