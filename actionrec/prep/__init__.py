"""The dataset preparation commands (``actionrec-make-synthetic``, ``actionrec-make-splits``,
``actionrec-check-videos``, ``actionrec-transcode``); ``data_prep/<name>.py`` runs the same ``main``."""
