"""``mtransfer ui``: a local web app (Gradio) to build a target motion, edit an image and run a clip.

``motion`` (controls ↔ spec terms, arrows, previews), ``uploads`` (checked copies under generated names)
and ``jobs`` (the server's jobs, one at a time in a worker thread, and their history) are plain Python. The
Gradio page is ``app``, which composes one module per tab (``motion_tab``, ``edit_tab``, ``video_tab``,
``jobs_tab``) over what they share
(``session``); it is imported only when the app starts because Gradio is an optional dependency (the
``ui`` extra).
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is first imported: no telemetry
