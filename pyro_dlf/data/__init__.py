"""Teacher streams: design points and teachers' values in batches, for :class:`pyro_dlf.infer.StreamingEM`.

Design points built from a user's inputs live in :mod:`pyro_dlf.design`.
"""

from pyro_dlf.data.streams import NpyStream, TeacherStream, TensorStream

__all__ = ["TensorStream", "NpyStream", "TeacherStream"]
