"""pytest fixtures for the review page and report tests (``pytest_plugins = ["review_fixtures"]``).

``segmented``: a SQLite catalog made by ``sam2ct segment`` (classical model) on the session's
synthetic studies: six prompts on the first study's two lesions (lines, a bidirectional, arrows
in two vendor encodings) and one line on the second study; made once per session.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

#: (study number, encoding) of the prompts segmented
PROMPTS = ((0, "line-mm"), (0, "display-units"), (0, "agfa-arrow"), (0, "bidirectional"),
           (0, "rotated"), (0, "text-anchor-arrow"), (1, "line-mm"))


@dataclass(frozen=True)
class Segmented:
    """The catalog and what the test knows of it: SEG folder, manifest, patient identity."""

    url: str
    out: Path
    manifest: dict
    lesion_of_gsps: dict[str, str]  # GSPS SOP Instance UID -> "study name/lesion id"
    patient_ids: tuple[str, ...]
    patient_names: tuple[str, ...]


@pytest.fixture(scope="session")
def segmented(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Segmented:
    """See the module docstring."""
    from flows.cli import main

    out = tmp_path_factory.mktemp("review-catalog")
    url = f"sqlite:///{out / 'catalog.sqlite'}"
    manifest = json.loads((synth_dir / "manifest.json").read_text())
    lesion_of, ids, names = {}, [], []
    for number, study in enumerate(manifest["studies"]):
        entries = [next(g for g in study["gsps"] if g["encoding"] == encoding)
                   for n, encoding in PROMPTS if n == number]  # its first lesion's
        for entry in entries:
            lesion_of[entry["sop_instance_uid"]] = f"{study['name']}/{entry['lesion']}"
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["segment", "--series", str(synth_dir / study["ct_dir"]), "--gsps",
                         *(str(synth_dir / g["file"]) for g in entries), "--out",
                         str(out / study["name"]), "--model", "classical", "--catalog", url])
        assert code == 0, f"sam2ct segment failed on {study['name']}"
        header = pydicom.dcmread(next((synth_dir / study["ct_dir"]).glob("*.dcm")),
                                 stop_before_pixels=True)
        ids.append(str(header.PatientID))
        names.append(str(header.PatientName))
    return Segmented(url, out, manifest, lesion_of, tuple(ids), tuple(names))
