"""``mtransfer ui``: a local web app (Gradio) to build a target motion, edit an image and run a clip.

``motion`` (controls ↔ spec terms, arrows, previews), ``uploads`` (checked copies under generated names)
and ``jobs`` (one job at a time in a worker thread) are plain Python; ``app`` is the Gradio page, imported
only when the app starts because Gradio is an optional dependency (the ``ui`` extra).
"""
