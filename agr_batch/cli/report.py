"""``agr-batch report``: options in, :func:`agr_batch.commands.report.build_report` called."""

from __future__ import annotations

import click

from agr_batch.cli.common import fail, setup_logging

__all__ = ["report"]


@click.command()
@click.argument("stats", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--png-dir", type=click.Path(file_okay=False), help="Also save each chart as PNG.")
@click.option(
    "--min-cell-count",
    default=5,
    show_default=True,
    help="Suppress chart cells with fewer distinct people or faces than this (0 = show all).",
)
@click.option("--tz", help="Time zone of the time charts, e.g. Europe/Berlin (default: local).")
def report(stats: str, out: str, png_dir: str | None, min_cell_count: int, tz: str | None) -> None:
    """Write a self-contained HTML report of a stats table or scanned dataset."""
    from agr_batch.commands.report import build_report

    setup_logging(0, quiet=True)
    try:
        data = build_report(stats, out, min_cell_count=min_cell_count, png_dir=png_dir, tz=tz)
    except (FileNotFoundError, ValueError, OSError) as e:
        fail(str(e))
    click.echo(data.summary_line(out), err=True)
    if data.notice:
        click.echo(f"agr-batch: {data.notice}", err=True)
