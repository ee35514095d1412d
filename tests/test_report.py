"""The run report people read: HTML and Prefect Markdown, from a real catalog (`sam2ct segment`
on synthetic studies), parsed back: grouped by study and lesion, a legend, encodings, measures,
flags, links to each SEG file and review page; no patient identifier."""

from __future__ import annotations

import re
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pytest

from db import open_catalog
from dicom_io.seg.preview import MASK_COLOUR, PROMPT_COLOUR
from flows.artifacts import RunSummary, markdown_page, report_cases, write_html_report
from flows.review import review_url

pytest_plugins = ["review_fixtures"]  # fixtures: segmented
pytestmark = pytest.mark.slow

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}


class Element:
    """A parsed HTML element: tag, attributes, children and its own text."""

    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs, self.children, self.text = tag, attrs, [], ""

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def find_all(self, tag: str, cls: str | None = None) -> list[Element]:
        found = []
        for child in self.children:
            if child.tag == tag and (cls is None or cls in child.classes()):
                found.append(child)
            found += child.find_all(tag, cls)
        return found

    def all_text(self) -> str:
        return self.text + " ".join(child.all_text() for child in self.children)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Element("document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in _VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].text += data


def parse(html: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


@pytest.fixture(scope="module")
def cases(segmented):
    engine = open_catalog(segmented.url)
    yield report_cases(engine)
    engine.dispose()


def _summary(cases) -> RunSummary:
    return RunSummary("2026-01-05", "2026-01-06", "DEMOPACS", found=len(cases),
                      segmented=len(cases), previews=[c.item.preview_path for c in cases])


def _expected_lesions(segmented, cases) -> dict[str, set[int]]:
    """Manifest lesion -> ids of the cases prompted on it."""
    by_lesion = defaultdict(set)
    for case in cases:
        by_lesion[segmented.lesion_of_gsps[case.item.gsps_sop_instance_uid]].add(case.id)
    return by_lesion


def test_html_report_groups_by_study_and_lesion_with_legend_and_links(segmented, cases,
                                                                      tmp_path: Path) -> None:
    assert len(cases) == 7 and all(c.ok for c in cases)
    path = write_html_report(tmp_path / "report" / "report.html", _summary(cases), "demo", cases,
                             "sam2ct review --catalog X")
    html = path.read_text()
    doc = parse(html)

    # the legend names both colours, as the previews draw them
    [legend] = doc.find_all("ul", "legend")
    styles = " ".join(s.attrs.get("style", "") for s in legend.find_all("span", "swatch"))
    for rgb in (MASK_COLOUR, PROMPT_COLOUR):
        assert "#" + "".join(f"{v:02x}" for v in rgb) in styles
    assert "mask outline" in legend.all_text() and "GSPS drawing" in legend.all_text()

    # grouped: one section per study, one block per lesion, exactly the manifest's lesions
    studies = doc.find_all("section", "study")
    assert len(studies) == 2
    found = {}
    for study in studies:
        for lesion in study.find_all("div", "lesion"):
            ids = {int(a.attrs["id"].removeprefix("segmentation-"))
                   for a in lesion.find_all("article", "case")}
            found[frozenset(ids)] = study.attrs["id"]
    assert set(found) == {frozenset(ids) for ids in _expected_lesions(segmented, cases).values()}

    # each case: its preview, kind, encoding, measures, flags, SEG file and review page
    articles = {int(a.attrs["id"].removeprefix("segmentation-")): a
                for a in doc.find_all("article", "case")}
    assert set(articles) == {c.id for c in cases}
    for case in cases:
        article = articles[case.id]
        [img] = article.find_all("img")
        assert (path.parent / img.attrs["src"]).resolve() == Path(case.item.preview_path)
        [seg] = article.find_all("a", "seg")
        assert (path.parent / seg.attrs["href"]).resolve() == Path(case.item.seg_path)
        assert (path.parent / seg.attrs["href"]).is_file()
        [review] = article.find_all("a", "review")
        assert review.attrs["href"] == review_url(case.id)
        text = article.all_text()
        assert case.kind in text and f"{case.item.volume_ml:.2f} mL" in text
        assert case.encoding in text and case.encoding != "unknown"
        assert all(flag["reason"] in text for flag in case.flags)
        assert ("no quality flag" in text) == (case.checked and not case.flags)
    assert {"AGFA IMPAX AGILITY" in c.encoding for c in cases} == {True, False}
    assert html.count("<img") == len(cases)  # one preview each, nothing else drawn as an image
    for secret in (*segmented.patient_ids, *segmented.patient_names):
        assert secret not in html


def test_markdown_artifact_groups_and_links(segmented, cases) -> None:
    page = markdown_page(_summary(cases), cases)
    headings = re.findall(r"^(#{1,3}) (.*)$", page, flags=re.M)
    assert [h for h, _ in headings].count("##") == 2  # two studies
    lesions = _expected_lesions(segmented, cases)
    assert [h for h, _ in headings].count("###") == len(lesions)
    assert "**Legend.**" in page and "#ffd400" in page and "#00e5ff" in page
    # each lesion's table holds exactly its cases, each with its SEG and review links
    blocks = re.split(r"^### .*$", page, flags=re.M)[1:]
    grouped = {frozenset(int(i) for i in re.findall(r"\[review\]\(http://127\.0\.0\.1:8765/"
                                                     r"segmentation/(\d+)\)", block))
               for block in blocks}
    assert grouped == {frozenset(ids) for ids in lesions.values()}
    for case in cases:
        assert f"[SEG](file://{case.item.seg_path})" in page
    assert page.count("](data:image/png;base64,") == len(cases)  # under MAX_PREVIEWS
    for secret in (*segmented.patient_ids, *segmented.patient_names):
        assert secret not in page


def test_markdown_escapes_catalog_text(cases) -> None:
    """A reason or flag with Markdown in it stays one table cell of plain text."""
    from dataclasses import replace

    case = cases[0]
    hostile = replace(case, item=replace(case.item, quality_flags=[
        {"code": "x|y", "reason": "*bold* [link](http://evil) <script>"}]))
    page = markdown_page(_summary([hostile]), [hostile])
    row = next(line for line in page.splitlines() if "x\\|y" in line)
    assert "\\*bold\\* \\[link\\](http://evil) \\<script\\>" in row
    assert row.count(" | ") == 8  # nine cells: the pipe in the code did not add one
