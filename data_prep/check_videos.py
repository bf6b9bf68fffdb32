#!/usr/bin/env python
"""Find broken videos in a dataset: the ``actionrec-check-videos`` command (actionrec/prep/check_videos.py)."""

import sys

from actionrec.prep.check_videos import main

if __name__ == "__main__":
    sys.exit(main())
