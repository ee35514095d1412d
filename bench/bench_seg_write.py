"""Benchmark: write one mask as a DICOM SEG with our write_seg vs dcmqi's itkimage2segimage.

On LUNG1-001, for a lesion-sized ball (10 mm radius) and for the whole GTV-1 from the RTSTRUCT.
Both sides do their whole job from files already on disk: read the source CT headers (dcmqi:
whole images), encode, write. dcmqi gets the mask as NIfTI and a JSON metadata file, written
beforehand and not timed. Prints the best-of-N seconds of each, interleaved, and the ratio
ours / dcmqi; checks that both SEGs read back to the same mask.

Usage: .venv/bin/python bench/bench_seg_write.py [CASE_DIR] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dicom_io.nifti import write_nifti
from dicom_io.seg import AlgorithmSpec, SegmentSpec, read_seg_masks, write_seg
from dicom_io.seg.writer import _cached_header
from dicom_io.truth import read_truth
from dicom_io.volume import Volume, load_series

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "lung1" / "LUNG1-001"
DCMQI = REPO / ".venv" / "bin" / "itkimage2segimage"
SPEC = SegmentSpec.for_annotation("1.2.826.0.1.3680043.8.498.1", 0, "line", "lesion")
ALGORITHM = AlgorithmSpec("classical", "1.0.0")


def dcmqi_metadata() -> dict:
    """The JSON metadata itkimage2segimage needs: one lesion segment, as ours writes it."""
    code = {"CodingSchemeDesignator": "SCT"}
    return {
        "ContentCreatorName": "bench^sam2ct",
        "ClinicalTrialSeriesID": "1",
        "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "bench",
        "SeriesNumber": "300",
        "InstanceNumber": "1",
        "BodyPartExamined": "CHEST",
        "segmentAttributes": [[{
            "labelID": 1,
            "SegmentLabel": SPEC.label,
            "SegmentAlgorithmType": "AUTOMATIC",
            "SegmentAlgorithmName": ALGORITHM.name,
            "TrackingIdentifier": SPEC.tracking_id,
            "TrackingUniqueIdentifier": SPEC.tracking_uid,
            "SegmentedPropertyCategoryCodeSequence": {
                **code, "CodeValue": "49755003", "CodeMeaning": "Morphologically Abnormal Structure"
            },
            "SegmentedPropertyTypeCodeSequence": {
                **code, "CodeValue": "52988006", "CodeMeaning": "Lesion"
            },
            "recommendedDisplayRGBValue": [255, 212, 0],
        }]],
        "ContentLabel": "LESIONS",
        "ContentDescription": "bench",
    }


def ball(volume: Volume, centre: np.ndarray, radius_mm: float) -> np.ndarray:
    """A ball of ``radius_mm`` around a (slice, row, column) index, on the volume grid."""
    axes = np.ogrid[tuple(slice(0, n) for n in volume.array.shape)]
    d2 = sum(((a - c) * s) ** 2 for a, c, s in zip(axes, centre, volume.spacing, strict=True))
    return d2 <= radius_mm**2


def best_of(runs: dict[str, Callable[[Path], Path]], work: Path, repeats: int) -> dict:
    """Fastest wall time and last output of each writer, alternating writers every round."""
    best: dict[str, tuple[float, Path]] = {}
    for i in range(repeats):
        for name, fn in runs.items():
            out = work / f"{name}-{i}"
            out.mkdir()
            start = time.perf_counter()
            path = fn(out)
            seconds = time.perf_counter() - start
            best[name] = (min(seconds, best.get(name, (np.inf, path))[0]), path)
    return best


def bench_mask(name: str, volume: Volume, ct_dir: Path, mask: np.ndarray, repeats: int) -> float:
    """Time both writers on one mask, check both read back, print and return ours / dcmqi."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nifti = write_nifti(mask.astype(np.uint8), volume.affine, work / "mask.nii.gz")
        meta = work / "meta.json"
        meta.write_text(json.dumps(dcmqi_metadata()))

        def ours(out: Path) -> Path:
            _cached_header.cache_clear()  # read the headers each time, as dcmqi does
            return write_seg(volume, [mask], [SPEC], ALGORITHM, out)

        def dcmqi(out: Path) -> Path:
            path = out / "dcmqi.dcm"
            subprocess.run(
                [str(DCMQI), "--inputImageList", str(nifti), "--inputDICOMDirectory", str(ct_dir),
                 "--inputMetadata", str(meta), "--outputDICOM", str(path)],
                check=True, capture_output=True, timeout=600,
            )
            return path

        best = best_of({"ours": ours, "dcmqi": dcmqi}, work, repeats)
        for writer, (_, path) in best.items():
            back = read_seg_masks(path, volume)[1]
            if not np.array_equal(back, mask):
                raise SystemExit(f"{writer}'s SEG of '{name}' does not read back to the mask")
        t_ours, t_dcmqi = best["ours"][0], best["dcmqi"][0]
        ratio = t_ours / t_dcmqi
        print(f"{name:<28} voxels {int(mask.sum()):>7}  ours {t_ours:6.2f} s  "
              f"dcmqi {t_dcmqi:6.2f} s  ours/dcmqi {ratio:5.2f}")
        return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ct_dir = args.case / "ct"
    volume = load_series(ct_dir)
    gtv = read_truth(args.case / "rtstruct.dcm", volume, "GTV-1")
    centre = np.argwhere(gtv).mean(axis=0)
    print(f"{args.case.name}: {volume.array.shape} voxels, best of {args.repeats}, interleaved")
    for name, mask in (("ball r=10 mm", ball(volume, centre, 10.0)), ("GTV-1", gtv)):
        bench_mask(name, volume, ct_dir, mask, args.repeats)


if __name__ == "__main__":
    main()
