"""The benchmark table of docs/benchmarks.md, rendered from `rampup bench --json` output.

    rampup bench --json rampup/benchmarks/results.json
    python -m rampup.benchmarks.docs_table rampup/benchmarks/results.json --page docs/benchmarks.md

prints the markdown table; with `--page` it also replaces the table between the page's
`<!-- bench-table:begin -->` and `<!-- bench-table:end -->` markers.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
from collections.abc import Sequence
from typing import Any

BEGIN = "<!-- bench-table:begin -->"
END = "<!-- bench-table:end -->"


def ratio_text(value: float) -> str:
    """A ratio with 3 decimals; a rate (queries per second) as a whole number."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3f}"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of `rampup bench --json` as a markdown table, in their order.

    Args:
      rows: dicts with name, ratio, target and holds, as `rampup bench` writes them.

    Returns:
      The table, one line per row, without a trailing newline.
    """
    lines = ["| benchmark | value | target | holds |", "|---|---|---|---|"]
    for r in rows:
        holds = "-" if r["target"] == "reported" else "yes" if r["holds"] else "**no**"
        if r.get("load_sensitive"):
            holds += " (load-sensitive)"
        name = r["name"].replace("|", "\\|")
        lines.append(f"| {name} | {ratio_text(r['ratio'])} | {r['target']} | {holds} |")
    return "\n".join(lines)


def replace_table(page: str, table: str) -> str:
    """`page` (a Markdown text) with the text between the markers replaced by `table`."""
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)
    if len(pattern.findall(page)) != 1:
        raise ValueError(f"the page needs exactly one {BEGIN} ... {END} block")
    return pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", page)


def main(argv: Sequence[str] | None = None) -> None:
    """Prints the table of a results file; `--page PATH` also writes it into that page."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="the JSON file that `rampup bench --json` wrote")
    p.add_argument("--page", metavar="PATH", help="replace the table in this Markdown page")
    args = p.parse_args(argv)
    table = markdown(json.loads(pathlib.Path(args.results).read_text()))
    print(table)
    if args.page:
        path = pathlib.Path(args.page)
        path.write_text(replace_table(path.read_text(), table))


if __name__ == "__main__":
    main()
