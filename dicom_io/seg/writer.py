"""Masks on a volume's grid -> one BINARY DICOM SEG instance (highdicom), written atomically.

Example
-------
>>> path = write_seg(volume, [mask], [SegmentSpec.from_annotation(annotation)],
...                  AlgorithmSpec("classical", "1.0.0"), out_dir,
...                  presentation_state=PresentationStateRef.from_dataset(gsps))  # doctest: +SKIP
>>> path.name  # doctest: +SKIP
'1.2.826.0.1.3680043.8.498.1234.dcm'

Provenance: the GSPS is the SEG's Source Instance Sequence (General Reference Module, "the
non-image composite SOP instances used to derive this instance") and is listed, like the CT
images, in the Common Instance Reference Module (Referenced Series Sequence, the CT series first:
viewers such as OHIF take the first item as the series the SEG overlays; or Studies Containing
Other Referenced Instances when the GSPS belongs to another study). Each segment's Tracking UID
and Tracking ID name its annotation (see :mod:`dicom_io.seg.content`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_sequence
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.tag import BaseTag, Tag
from pydicom.uid import generate_uid

from dicom_io.errors import DicomInputError
from dicom_io.files import atomic_path
from dicom_io.seg.content import (
    AlgorithmSpec,
    PresentationStateRef,
    SegmentSpec,
    series_description_for,
    series_number_for,
)
from dicom_io.volume import Volume

_DISTRIBUTION = "sam2ct-harvest"
_MANUFACTURER = "SAM2CT harvest"
_MODEL_NAME = "sam2ct"
# Distinct display colours cycled over segments, in sRGB (each channel 20..240, so a viewer's own
# CIELab -> RGB conversion stays in range): gold, red, cyan, green, magenta, orange.
_COLOURS_RGB = (
    (240, 200, 30),
    (220, 50, 50),
    (40, 200, 220),
    (60, 190, 80),
    (210, 60, 200),
    (240, 140, 40),
)
# highdicom warns about single-component person names by quoting the name: patient data.
_NAME_WARNING = ".*unlikely to represent the intended person name.*"


def software_version() -> str:
    """The installed version of this project, for SoftwareVersions."""
    try:
        return version(_DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def seg_uids(
    anchor_uid: str, algorithm: AlgorithmSpec, segments: Sequence[SegmentSpec]
) -> tuple[str, str]:
    """Deterministic (SeriesInstanceUID, SOPInstanceUID) of the SEG for these inputs.

    ``anchor_uid`` is the presentation state UID (one SEG per GSPS and series) or the source
    series UID; re-running on the same input gives the same UIDs, so a re-run overwrites.
    """
    base = [
        "sam2ct-seg",
        anchor_uid,
        algorithm.name,
        algorithm.version,
        algorithm.checkpoint_sha256 or "classical",
        *(s.tracking_uid for s in segments),
    ]
    series = generate_uid(entropy_srcs=[*base, "series"])
    instance = generate_uid(entropy_srcs=[*base, "instance"])
    return str(series), str(instance)


def write_seg(
    volume: Volume,
    masks: Sequence[np.ndarray],
    segments: Sequence[SegmentSpec],
    algorithm: AlgorithmSpec,
    out_dir: Path,
    series_number: int | None = None,
    content_label: str = "LESIONS",
    presentation_state: PresentationStateRef | None = None,
) -> Path:
    """Write the masks as one BINARY DICOM SEG over ``volume``'s source images.

    Parameters
    ----------
    volume
        The CT volume the masks lie on; its slices' files supply the source image headers.
    masks
        One boolean array (slices, rows, columns) per segment, on the volume grid, none empty.
    segments
        One :class:`SegmentSpec` per mask, in segment-number order (1, 2, ...).
    algorithm
        The algorithm identification written into every segment.
    out_dir
        Folder for "<SOPInstanceUID>.dcm" (created if needed).
    series_number
        SeriesNumber; by default derived from the SEG's series UID (:func:`series_number_for`).
    presentation_state
        The GSPS the prompts came from: it anchors the deterministic SEG UIDs, names the series
        and is referenced as the SEG's source (when its UIDs are usable).

    Raises
    ------
    ValueError
        Mismatched counts, a mask of the wrong shape, or an empty mask (naming the segment).
    DicomInputError
        A source image header cannot be read or lacks attributes a SEG copies.
    """
    _check_masks(volume, masks, segments)
    headers, frame_index = _source_images(volume)
    sources, pixels = _sources_and_pixels(headers, frame_index, masks)
    state = presentation_state
    series_uid, sop_uid = seg_uids(
        state.sop_instance_uid if state else volume.series_instance_uid, algorithm, segments
    )
    number = series_number if series_number is not None else series_number_for(series_uid)
    identification = algorithm.identification()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NAME_WARNING, category=UserWarning)
        try:
            seg = _segmentation(sources, pixels, segments, identification, series_uid, sop_uid,
                                number, content_label, algorithm)
        except (AttributeError, KeyError) as e:
            raise DicomInputError(
                f"series {volume.series_instance_uid} - source image headers lack what a SEG "
                f"needs: {e}"
            ) from e
    seg.SeriesDescription = series_description_for(number, algorithm.name, state)
    source = state if state is not None and state.referencable else None
    _reference_series(seg, headers, source)
    if source is not None:
        seg.SourceInstanceSequence = [_instance_reference(source)]
    return _save(seg, Path(out_dir) / f"{sop_uid}.dcm")


def _segmentation(
    sources: list[Dataset],
    pixels: np.ndarray,
    segments: Sequence[SegmentSpec],
    identification: hd.AlgorithmIdentificationSequence,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    content_label: str,
    algorithm: AlgorithmSpec,
) -> hd.seg.Segmentation:
    """The highdicom Segmentation object; patient and study data are copied from the sources."""
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _description(number, spec, identification)
            for number, spec in enumerate(segments, start=1)
        ],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=_MODEL_NAME,
        software_versions=software_version(),
        device_serial_number=algorithm.device_serial_number,
        content_label=content_label,
        content_description=f"Lesions segmented by {algorithm.name} from GSPS annotations"[:64],
    )
    return seg


def _check_masks(
    volume: Volume, masks: Sequence[np.ndarray], segments: Sequence[SegmentSpec]
) -> None:
    """Same number of masks and segments, each on the volume grid and not empty."""
    if not masks:
        raise ValueError("Invalid 'masks' - a SEG needs at least one segment")
    if len(masks) != len(segments):
        raise ValueError(
            f"Invalid 'segments' - {len(segments)} descriptions for {len(masks)} masks"
        )
    for mask, spec in zip(masks, segments, strict=True):
        if mask.shape != volume.array.shape:
            raise ValueError(
                f"Invalid mask of segment '{spec.label}' ({spec.tracking_id}) - shape "
                f"{mask.shape}, the volume is {volume.array.shape}"
            )
        if not np.any(mask):
            raise ValueError(
                f"Invalid mask of segment '{spec.label}' ({spec.tracking_id}) - empty, "
                "a SEG holds no empty segment"
            )


def _read_header(path: Path) -> Dataset:
    """A source image without its pixel data, named in the error when unreadable.

    Cached per (file, modification time): one SEG is written per GSPS, and a series with several
    GSPS would otherwise have every source header read again for each. Treat as read-only.
    """
    try:
        return _cached_header(str(path), path.stat().st_mtime_ns)
    except (InvalidDicomError, OSError) as e:
        raise DicomInputError(f"source image {path} - cannot read its header: {e}") from e


@functools.lru_cache(maxsize=4096)
def _cached_header(path: str, mtime_ns: int) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _source_images(volume: Volume) -> tuple[list[Dataset], list[int]]:
    """Source headers and, per volume slice, the frame index in highdicom's pixel array.

    Single-frame sources: one header per slice, in volume order. A multi-frame source: its one
    header, and each slice's (FrameNumber - 1), since highdicom lays frames out in source order.
    """
    paths = [s.path for s in volume.slices]
    multi = [s.frame_number is not None for s in volume.slices]
    if not any(multi):
        return [_read_header(p) for p in paths], list(range(len(paths)))
    if not all(multi) or len(set(paths)) != 1:
        raise ValueError(
            f"Invalid volume of series {volume.series_instance_uid} - a SEG over several "
            "multi-frame images, or mixed single- and multi-frame images, is not supported"
        )
    return [_read_header(paths[0])], [s.frame_number - 1 for s in volume.slices]


def _sources_and_pixels(
    headers: list[Dataset], frame_index: list[int], masks: Sequence[np.ndarray]
) -> tuple[list[Dataset], np.ndarray]:
    """The source images given to highdicom and the (frames, rows, columns, segments) pixels.

    Single-frame sources: only the slices from the first to the last one any mask touches.
    highdicom inspects every source image it is given (a few ms each, the bulk of a SEG's cost
    on a long series), while the empty frames outside that range are omitted from the SEG
    anyway; :func:`_reference_series` then lists the whole series again. A multi-frame source
    is one image: all its frames are passed.
    """
    if len(headers) == 1:
        return headers, _pixel_array(masks, frame_index, max(frame_index) + 1)
    touched = np.flatnonzero(np.logical_or.reduce([m.any(axis=(1, 2)) for m in masks]))
    first, last = int(touched[0]), int(touched[-1]) + 1
    return headers[first:last], _pixel_array([m[first:last] for m in masks],
                                             list(range(last - first)), last - first)


def _pixel_array(masks: Sequence[np.ndarray], frame_index: list[int], frames: int) -> np.ndarray:
    """(frames, rows, columns, segments) uint8 array; mask slice i goes to frame_index[i]."""
    _, rows, cols = masks[0].shape
    out = np.zeros((frames, rows, cols, len(masks)), dtype=np.uint8)
    for k, mask in enumerate(masks):
        out[frame_index, :, :, k] = mask.astype(bool)
    return out


def _reference_series(seg: hd.seg.Segmentation, headers: list[Dataset],
                      state: PresentationStateRef | None) -> None:
    """Reference every image of the source series, as highdicom does for the images it is given,
    and the GSPS ``state`` in the Common Instance Reference.

    Source Image Sequence and the Common Instance Reference list the whole series the masks
    were segmented on, not only the slices the frames lie on. Both lists are the same for every
    SEG of a series (one per GSPS): they are encoded once per series and written as raw
    elements, which pydicom copies as they are. Encoding them again per SEG, an item and two
    UIDs at a time, was half the cost of a SEG on a long series. The GSPS's series item is
    encoded per SEG and appended after the CT series' item.
    """
    images = tuple((str(h.SOPClassUID), str(h.SOPInstanceUID)) for h in headers)
    series_uid = str(headers[0].SeriesInstanceUID)
    same_study = state is not None and state.study_instance_uid == str(seg.StudyInstanceUID)
    extra = [_series_reference(state)] if same_study and state else []
    if state is not None and not same_study:
        study = Dataset()
        study.StudyInstanceUID = state.study_instance_uid
        study.ReferencedSeriesSequence = [_series_reference(state)]
        seg.StudiesContainingOtherReferencedInstancesSequence = [study]
    syntax = seg.file_meta.TransferSyntaxUID
    if syntax.is_implicit_VR or not syntax.is_little_endian:  # raw bytes are explicit VR LE
        source, series = _references(series_uid, images)
        seg.SourceImageSequence, seg.ReferencedSeriesSequence = source, series + extra
        return
    # what pydicom's writer does first, done here before the raw elements go in (it would
    # decode them to look for ambiguous VRs): then mark the dataset as being in the encoding
    # it is written in, so pydicom writes the raw elements as they are
    correct_ambiguous_vr(seg, True)
    source_raw, series_raw = _encoded_references(series_uid, images)
    seg[source_raw.tag] = source_raw
    seg[series_raw.tag] = _with_items(series_raw, extra)
    seg.set_original_encoding(False, True,
                              convert_encodings(seg.get("SpecificCharacterSet") or "ISO_IR 6"))


def _instance_reference(state: PresentationStateRef) -> Dataset:
    """A SOP Instance Reference Macro item naming the GSPS."""
    ref = Dataset()
    ref.ReferencedSOPClassUID = state.sop_class_uid
    ref.ReferencedSOPInstanceUID = state.sop_instance_uid
    return ref


def _series_reference(state: PresentationStateRef) -> Dataset:
    """The Common Instance Reference's item of the GSPS's series, listing the GSPS."""
    series = Dataset()
    series.SeriesInstanceUID = state.series_instance_uid
    series.ReferencedInstanceSequence = [_instance_reference(state)]
    return series


def _references(series_uid: str, images: tuple[tuple[str, str], ...]) -> tuple[list, list]:
    """Source Image Sequence items and the Referenced Series Sequence of ``images``."""
    refs = []
    for class_uid, instance_uid in images:
        ref = Dataset()
        ref.ReferencedSOPClassUID = class_uid
        ref.ReferencedSOPInstanceUID = instance_uid
        refs.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedInstanceSequence = refs
    return refs, [series]


@functools.lru_cache(maxsize=16)
def _encoded_references(series_uid: str,
                        images: tuple[tuple[str, str], ...]) -> tuple[RawDataElement, ...]:
    """The two reference sequences encoded by pydicom (explicit VR little endian), once."""
    source, series = _references(series_uid, images)
    return (_raw_sequence(Tag("SourceImageSequence"), source),
            _raw_sequence(Tag("ReferencedSeriesSequence"), series))


def _with_items(raw: RawDataElement, items: list[Dataset]) -> RawDataElement:
    """The raw sequence ``raw`` with ``items`` encoded and appended after its own items."""
    if not items:
        return raw
    value = raw.value + _raw_sequence(raw.tag, items).value
    return RawDataElement(raw.tag, "SQ", len(value), value, 0, False, True)


def _raw_sequence(tag: BaseTag, items: list[Dataset]) -> RawDataElement:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_sequence(buffer, DataElement(tag, "SQ", DicomSequence(items)), [default_encoding])
    value = buffer.getvalue()
    return RawDataElement(tag, "SQ", len(value), value, 0, False, True)


def _description(
    number: int, spec: SegmentSpec, identification: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    """A lesion segment: SCT morphologically abnormal structure / lesion, automatic, tracked."""
    item = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=spec.label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification,
        tracking_uid=spec.tracking_uid,
        tracking_id=spec.tracking_id,
        display_color=hd.color.CIELabColor.from_rgb(
            *_COLOURS_RGB[(number - 1) % len(_COLOURS_RGB)]),
    )
    if spec.description:
        item.SegmentDescription = spec.description[:64]
    return item


def _save(seg: hd.seg.Segmentation, path: Path) -> Path:
    """Write the SEG whole or not at all."""
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path
