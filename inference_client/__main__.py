"""``python -m inference_client``: see inference_client._cli."""

import sys

from inference_client._cli import main

sys.exit(main())
