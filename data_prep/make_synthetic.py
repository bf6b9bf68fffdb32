#!/usr/bin/env python
"""Generate the synthetic UCF101-style dataset: the ``actionrec-make-synthetic`` command (actionrec/prep/make_synthetic.py)."""

import sys

from actionrec.prep.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
