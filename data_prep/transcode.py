#!/usr/bin/env python
"""Re-encode a dataset to seek-friendly MP4: the ``actionrec-transcode`` command (actionrec/prep/transcode.py)."""

import sys

from actionrec.prep.transcode import main

if __name__ == "__main__":
    sys.exit(main())
