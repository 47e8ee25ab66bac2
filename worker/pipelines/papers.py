"""The bundled, offline set of real PubMed records the video pipeline narrates.

``papers.json`` (next to this file) holds a handful of records: pmid, title, authors,
journal, year, doi, abstract and the page each abstract was taken from. Nothing here
touches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PAPERS_FILE", "Paper", "UnknownPaperError", "list_papers", "load_paper"]

PAPERS_FILE = Path(__file__).with_name("papers.json")


class UnknownPaperError(LookupError):
    """The paper id is not in the bundled set."""


@dataclass(frozen=True)
class Paper:
    pmid: str
    title: str
    authors: tuple[str, ...]
    journal: str
    year: int
    abstract: str
    doi: str | None = None
    source: str | None = None

    @property
    def byline(self) -> str:
        """``First Author, Second Author et al.``: short enough for a title slide."""
        names = [a for a in self.authors if a != "et al."]
        if not names:
            return ""
        if len(names) == 1 and len(self.authors) == 1:
            return names[0]
        if len(names) == 2 and len(self.authors) == 2:
            return f"{names[0]} and {names[1]}"
        return f"{names[0]} et al."

    def to_dict(self) -> dict:
        return {
            "pmid": self.pmid,
            "title": self.title,
            "authors": list(self.authors),
            "journal": self.journal,
            "year": self.year,
            "doi": self.doi,
            "abstract": self.abstract,
            "source": self.source,
        }


def list_papers(path: Path = PAPERS_FILE) -> list[Paper]:
    """Every bundled paper, in the file's order."""
    with open(path, encoding="utf-8") as f:
        records = json.load(f)["papers"]
    return [
        Paper(
            pmid=str(r["pmid"]),
            title=r["title"],
            authors=tuple(r["authors"]),
            journal=r["journal"],
            year=int(r["year"]),
            abstract=r["abstract"],
            doi=r.get("doi"),
            source=r.get("source"),
        )
        for r in records
    ]


def load_paper(pmid: str, path: Path = PAPERS_FILE) -> Paper:
    """The bundled paper with this PubMed id; ``UnknownPaperError`` names the ones there are."""
    papers = list_papers(path)
    for paper in papers:
        if paper.pmid == str(pmid).strip():
            return paper
    known = ", ".join(p.pmid for p in papers)
    raise UnknownPaperError(f"unknown paper id {pmid!r}: the bundled set holds {known}")
