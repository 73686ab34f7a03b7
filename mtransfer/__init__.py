"""mtransfer: transfer the motion of a video onto still images with motion-guided diffusion."""

__version__ = "0.1.0"
