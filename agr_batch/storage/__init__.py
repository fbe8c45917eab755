"""Writing outputs safely, and file hashes.

* :mod:`~agr_batch.storage.sinks` — Parquet tables written to temporary files and replaced
  as one set, all or nothing;
* :mod:`~agr_batch.storage.safety` — no output may be an input, another output or a media
  name, however spelled;
* :mod:`~agr_batch.storage.hashing` — SHA-256 of files (checkpoints, engine caches, scan
  identity).
"""
