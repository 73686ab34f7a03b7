"""Names that tell the two kinds of result folder apart (one home, read by every front end)."""

RUN_MANIFEST = "manifest.json"
"""The file that makes a folder a ``mtransfer run`` folder (its manifest)."""

EDIT_RECORD = "run.json"
"""The file that makes a folder a finished ``mtransfer edit`` folder (written last)."""

SUPERSEDED = "superseded"
"""Where ``--restart`` moves earlier results, inside the run or edit folder (never deleted)."""


class EditFolder:
    """The file names of one ``mtransfer edit`` folder: written by ``mtransfer.app.edit_folder``, read by
    ``mtransfer eval``, the web app and the CLI, so a renamed file changes here only."""

    RECORD = EDIT_RECORD
    SOURCE = "source.png"
    EDITED = "edited.png"
    TARGET_FLOW = "target_flow.flo"
    """The target flow itself: what ``mtransfer eval`` judges the edit against."""
    TARGET_PICTURE = "target_flow.png"
    ACHIEVED_PICTURE = "achieved_flow.png"
    ERROR_PICTURE = "flow_error.png"
    COMPARISON = "comparison.png"
    LOSS_CURVES = "loss.png"
    LOSSES = "losses.json"
    REPORT = "report.html"
    PREVIEWS = "previews"

    @staticmethod
    def preview(step: int) -> str:
        """The one-step estimate at guidance step ``step``, relative to the folder."""
        return f"{EditFolder.PREVIEWS}/step_{step:04d}.png"
