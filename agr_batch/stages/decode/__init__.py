"""The decode stage: input discovery, then frames from videos and images.

Modules: :mod:`~agr_batch.stages.decode.media` (finding inputs, :class:`SourceError`,
:func:`~agr_batch.stages.decode.media.frames` for any file), :mod:`~agr_batch.stages.decode.video`
(PyAV, the shared sampling rule; :mod:`~agr_batch.stages.decode.lookahead` lets it skip
frames that are neither sampled nor referenced), :mod:`~agr_batch.stages.decode.image`
(Pillow), and the GPU
decoders :mod:`~agr_batch.stages.decode.torchcodec`, :mod:`~agr_batch.stages.decode.nvdec`
(frames born on the GPU) and :mod:`~agr_batch.stages.decode.nvjpeg` (batched JPEG decoding).
This package imports none of them, so the light ones (``media``) load without PyAV or NumPy.

Everything here is a plain generator of :class:`~agr_batch.records.Frame` records (in the
spirit of roboflow supervision's ``get_video_frames_generator``); nothing is buffered beyond
the frame being yielded.

Error policy: every failure to read a source is a :class:`SourceError` whose ``str()`` is one
line, ``"<path>: <reason>"``. Generators are lazy, so a file that cannot be opened raises on
the first ``next()``. A video that breaks mid-stream (a truncated file, corrupt packets the
decoder refuses, fewer packets than the container's index lists) first yields every frame
it could decode and then raises :class:`SourceError`; the caller keeps those frames but counts
the file as failed. (With frame threading, the few frames still inside the decoder when it
reports an error can be lost; in keyframes-only mode that may be the last keyframe.)
A video without a frame index that merely ends before its stated duration (a truncated
Matroska or MPEG-TS file) cannot be told apart with certainty from one whose audio outlasts
the video, so it only logs a warning.
"""
