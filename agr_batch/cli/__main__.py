"""``python -m agr_batch.cli``: the ``agr-batch`` command."""

from agr_batch.cli import main

main()
