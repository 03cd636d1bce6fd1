"""``python -m lazyflow ...`` is the ``lazyflow`` command."""
import sys

from .cli import main

sys.exit(main())
