"""Names that tell the two kinds of result folder apart (one home, read by every front end)."""

RUN_MANIFEST = "manifest.json"
"""The file that makes a folder a ``mtransfer run`` folder (its manifest)."""

EDIT_RECORD = "run.json"
"""The file that makes a folder a finished ``mtransfer edit`` folder (written last)."""
