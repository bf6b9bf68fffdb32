#!/usr/bin/env python
"""Write UCF101-format split lists: the ``actionrec-make-splits`` command (actionrec/prep/make_splits.py)."""

import sys

from actionrec.prep.make_splits import main

if __name__ == "__main__":
    sys.exit(main())
