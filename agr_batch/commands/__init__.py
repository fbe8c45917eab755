"""The typed functions behind the commands; :mod:`agr_batch.cli` only parses their options.

* :mod:`~agr_batch.commands.run` — ``run``: inputs to one output set, on any pipeline;
* :mod:`~agr_batch.commands.scan` — ``scan`` and ``status``: a folder to an incremental,
  exactly-once Parquet dataset (its plan, state, commit protocol and file identity);
* :mod:`~agr_batch.commands.report` — ``report``: an HTML report of a table or dataset;
* :mod:`~agr_batch.commands.info` — ``info``: a checkpoint's metadata and cost;
* :mod:`~agr_batch.commands.compile` — ``compile``: a classifier engine built ahead of time;
* :mod:`~agr_batch.commands.bench` — ``bench``: classifier and end-to-end throughput.
"""
