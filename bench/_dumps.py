"""Load (title, abstract, facts) from the shared dumps without the project's parser.

The benchmark must run whatever state the parser is in, so it reads the dumps with a small
heuristic of its own: an abstract is a long line; its title is the line just before it;
the lines after it up to the next title may hold "N authors", an organization, a date and upvotes.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path

from digest.models import StoredPaper, paper_key

DUMPS = Path(__file__).resolve().parents[2] / "shared" / "dumps"
_DATE = re.compile(r"([A-Z][a-z]{2} \d{1,2}(?:, \d{4})?)(?: (\d+))?$")
_AUTHORS = re.compile(r"•\s*(\d+) authors?$")


def load_papers(folder: Path = DUMPS) -> list[StoredPaper]:
    """Distinct papers of every dump in folder, as StoredPaper with ids from 1."""
    out: dict[str, StoredPaper] = {}
    for f in sorted(folder.glob("*.txt")):
        lines = [s.strip() for s in f.read_text(encoding="utf-8-sig").splitlines()]
        lines = [s for s in lines if s]
        heads = [k for k, s in enumerate(lines) if len(s) >= 300 and k > 0]
        for n, k in enumerate(heads):
            title = lines[k - 1].removeprefix("Subscribe") or lines[k - 1]
            facts: dict = {}
            stop = heads[n + 1] - 1 if n + 1 < len(heads) else len(lines)
            for s in lines[k + 1 : stop]:
                if m := _AUTHORS.search(s):
                    facts["authors"] = int(m.group(1))
                elif m := _DATE.match(s):
                    text = m.group(1) if "," in m.group(1) else m.group(1) + ", 2026"
                    facts["published"] = datetime.strptime(text, "%b %d, %Y").date()
                    if m.group(2):
                        facts["upvotes"] = int(m.group(2))
                elif s != "·" and " " in s and len(s) < 80:
                    org_id, _, name = s.partition(" ")
                    facts["organization_id"], facts["organization"] = org_id, name
            key = paper_key(title)
            if key not in out:
                out[key] = StoredPaper(
                    id=len(out) + 1,
                    key=key,
                    title=title,
                    abstract=lines[k],
                    first_seen=datetime(2026, 1, 1),
                    **facts,
                )
    return out


if __name__ == "__main__":
    ps = list(load_papers().values())
    print(
        len(ps), sum(p.upvotes is not None for p in ps), sum(p.organization is not None for p in ps)
    )
    print([p for p in ps if p.organization][:2])
    _ = date
