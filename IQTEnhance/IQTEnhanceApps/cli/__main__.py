"""``python -m IQTEnhanceApps.cli``: the same as the ``iqt-enhance`` console script."""
import sys

from .main import main

sys.exit(main())
