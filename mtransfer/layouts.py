"""The layouts of the two kinds of result folder, a run folder and an edit folder: one home for every file
name, read and written by every stage, the evaluation, the report and the front ends."""

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


# --- a run folder (``mtransfer run`` / ``mtransfer flow``), paths relative to it ---------------------------

SOURCE = "source.png"
"""The target image at the working size."""
DRIVING = "driving"
"""``driving/0000.png``: the decoded driving frames (flow resolution)."""
DRIVING_FLOW = "driving_flow"
"""``driving_flow/0001.flo``: the driving flow as estimated, frame 0 → t (direct) or t-1 → t (chained)."""
DRIVING_COLOR = "driving_color"
"""``driving_color/0001.png``: its colour coding (``mtransfer flow`` only)."""
SUMMARY = "summary.json"
"""``mtransfer flow``'s per-flow records."""
FLOW = "flow"
"""``flow/0000.flo``: the aligned target flows 0 → t on the image's grid (frame 0: no motion)."""
FLOW_COLOR = "flow_color"
"""``flow_color/0000.png``: their colour coding (one scale for the clip)."""
EDIT_MASK = "edit_mask"
"""``edit_mask/0000.png``: where guidance may change the image (white)."""
FRAMES = "frames"
"""``frames/0000.png``: the results."""
LATENTS = "cache/latents"
"""``cache/latents/0001.pt``: each result's clean latent, what a warm-started frame starts from."""
ACHIEVED_FLOW = "cache/achieved_flow"
"""``cache/achieved_flow/0001.flo``: the flow the guiding estimator measures from the source to each result."""
SOURCE_STATE = "cache/source_state.pt"
"""The prepared source (inversion), shared by every frame of the run."""
EVALUATION = "evaluation.json"
"""The independent evaluation of the results (also per frame in the manifest)."""
ACHIEVED_COLOR = "achieved_color"
"""``achieved_color/0001.png``: the report's picture of each achieved flow."""
FLOW_ERROR = "flow_error"
"""``flow_error/0001.png``: the report's map of ``|achieved − target|``."""
RESULT_MP4, RESULT_GIF, SIDE_BY_SIDE, FLOW_VIDEO, REPORT = (
    "result.mp4", "result.gif", "side_by_side.mp4", "flow.mp4", "report.html"
)
"""The clip, as video and GIF; driving | target flow | result; driving | target flow; the HTML report."""

STAGE_OUTPUTS = {
    "decode": (DRIVING,),
    "flow": (DRIVING_FLOW,),
    "align": (SOURCE, FLOW, FLOW_COLOR, EDIT_MASK),
    "guide": (FRAMES, LATENTS, ACHIEVED_FLOW, SOURCE_STATE),
    "evaluate": (EVALUATION,),
    "encode": (RESULT_MP4, RESULT_GIF, SIDE_BY_SIDE, FLOW_VIDEO, REPORT, DRIVING_COLOR, SUMMARY,
               ACHIEVED_COLOR, FLOW_ERROR),
}
"""What each stage of a run writes: moved aside together when the stage's settings change (``--restart``)."""


def frame_file(kind: str, index: int) -> str:
    """The numbered file of one frame in a run folder, e.g. ``frame_file(FRAMES, 3) == "frames/0003.png"``."""
    return f"{kind}/{index:04d}{FRAME_SUFFIX[kind]}"


FRAME_SUFFIX = {DRIVING: ".png", DRIVING_FLOW: ".flo", DRIVING_COLOR: ".png", FLOW: ".flo", FLOW_COLOR: ".png",
                EDIT_MASK: ".png", FRAMES: ".png", LATENTS: ".pt", ACHIEVED_FLOW: ".flo", ACHIEVED_COLOR: ".png",
                FLOW_ERROR: ".png"}
"""The file type of each per-frame folder."""
