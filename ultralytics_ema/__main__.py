"""``python -m ultralytics_ema``: the ``ultralytics-ema`` command (:mod:`ultralytics_ema.cli`)."""

import sys

from ultralytics_ema.cli import main

if __name__ == "__main__":
    sys.exit(main())
