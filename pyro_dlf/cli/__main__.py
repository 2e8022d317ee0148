"""``python -m pyro_dlf.cli``: the ``pyro-dlf`` command line (as under ``torchrun``)."""

import sys

from pyro_dlf.cli.main import main

sys.exit(main())
