"""The chain, one module per stage, in the order frames flow through it.

* :mod:`~agr_batch.stages.decode` — input discovery; frames from videos (PyAV, TorchCodec,
  NVDEC) and images (Pillow, nvJPEG), sampled by presentation time;
* :mod:`~agr_batch.stages.detect` — face boxes and five landmarks (CenterFace on
  onnxruntime, OpenVINO or PyTorch; SCRFD);
* :mod:`~agr_batch.stages.align` — FairFace-geometry chips (:mod:`~agr_batch.stages.align_torch`:
  the same on the device, batched);
* :mod:`~agr_batch.stages.track` — one track per person across sampled frames;
* :mod:`~agr_batch.stages.vote` — which faces of a track are classified, and the vote;
* :mod:`~agr_batch.stages.classify` — probabilities per head from chips
  (:mod:`~agr_batch.stages.preprocess`: chips to the model's input);
* :mod:`~agr_batch.stages.aggregate` — the stats, faces and tracks tables.

Stages know nothing of threads or clusters: :mod:`agr_batch.pipeline` runs them. Importing
this package loads none of them.
"""
