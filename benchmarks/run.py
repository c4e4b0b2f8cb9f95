"""Run the benchmarks and write ``benchmarks/RESULTS.md``.

    python -m benchmarks.run                 # every benchmark (what `make bench` runs)
    python -m benchmarks.run --only data     # one benchmark; the other sections of RESULTS.md stay
    python -m benchmarks.run --quick         # smaller sizes, one repeat: a smoke test, not results

To add a benchmark, write ``benchmarks/bench_<name>.py`` with ``run(ctx: Ctx) -> str`` returning a
markdown section (starting with a ``## `` heading); it is found by its file name. :data:`ORDER` sets
the order of sections (benchmarks not listed there follow, alphabetically). Each section is stored
between ``<!-- bench:<name> -->`` markers, so re-running one benchmark replaces only its own
section. Scratch data goes to ``ctx.work`` (``benchmarks/.work/<name>/``, gitignored).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import REPO, Ctx, machine_info, run_stamp

#: Report order of the known benchmarks (module ``benchmarks.bench_<name>``).
ORDER: tuple[str, ...] = ("data", "models", "service")

RESULTS = REPO / "benchmarks" / "RESULTS.md"
_SECTION = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /bench:(?P=name) -->\n", re.S)


def discover() -> list[str]:
    """Names of the ``bench_<name>.py`` modules next to this file, in report order."""
    found = {path.stem.removeprefix("bench_") for path in Path(__file__).parent.glob("bench_*.py")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def header(argv: Sequence[str], benches: Sequence[str]) -> str:
    """Machine description and the commands that reproduce the file."""
    info = "\n".join(f"- **{key}:** {value}" for key, value in machine_info().items())
    return f"""# Tailor benchmarks

Last written by `python -m benchmarks.run {" ".join(argv)}`. Each section names the run that measured it
(a re-run of one section keeps the others as they were).

## Machine

{info}

## Reproduce

```bash
make bench                                   # = uv run --locked python -m benchmarks.run
uv run --locked python -m benchmarks.run --only NAME    # one of: {", ".join(benches)}; other sections are kept
```

Every measured step runs in its own fresh Python process (`benchmarks/common.py`): times exclude
interpreter start-up, memory is that process's peak RSS (including the interpreter and imported
libraries). Scratch data lives in `benchmarks/.work/` (gitignored) and is reused between runs.
"""


def run_bench(name: str, quick: bool, command: str) -> str:
    """Run one benchmark module; its section, stamped with ``command``'s run, wrapped in markers."""
    module = importlib.import_module(f"benchmarks.bench_{name}")
    ctx = Ctx(name=name, quick=quick, repeats=1 if quick else 3)
    stamp = run_stamp(command)  # taken at the start: the load average before this benchmark's own work
    start = time.perf_counter()
    heading, _, rest = module.run(ctx).strip().partition("\n")
    body = f"{heading}\n\n{stamp}\n{rest}\n"
    ctx.log(f"done in {time.perf_counter() - start:.0f} s")
    return f"<!-- bench:{name} -->\n{body}<!-- /bench:{name} -->\n"


def previous_sections(path: Path) -> dict[str, str]:
    """Sections already in RESULTS.md, by name (kept when only some benchmarks are re-run)."""
    if not path.exists():
        return {}
    return {m["name"]: m.group(0) for m in _SECTION.finditer(path.read_text())}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the chosen benchmarks, rewrite RESULTS.md (or ``--out``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    benches = discover()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=benches, help="run only this benchmark (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results")
    opts = parser.parse_args(args)
    sections = previous_sections(opts.out)
    for name in opts.only or benches:
        sections[name] = run_bench(name, opts.quick, " ".join(["python -m benchmarks.run", *args]))
    ordered = [sections[name] for name in benches if name in sections]
    opts.out.write_text(header(args, benches) + "\n" + "\n".join(ordered))
    print(f"wrote {opts.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
