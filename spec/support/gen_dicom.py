#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Generate real DICOM Part-10 files with fresh UIDs, for specs and benchmarks.

Each file is a Secondary Capture image written by pydicom. The header is
written by pydicom and, except for deflated files, the Pixel Data element is
appended raw in 1 MiB chunks, so a multi-gigabyte file never sits in memory.
One JSON line per file goes to stdout: path, sop_instance_uid, study_uid,
series_uid, sop_class_uid, transfer_syntax, size (bytes on disk).
"""

import argparse
import json
import math
import os
import struct
import sys

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (generate_uid, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
                         PYDICOM_IMPLEMENTATION_UID)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_GRAYSCALE_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "big": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
}
CHUNK = 1 << 20


def geometry(size, frames):
    """Rows and columns so that rows*cols*frames is at least size (8-bit pixels)."""
    per_frame = max(1, math.ceil(size / frames))
    cols = min(256, per_frame)
    while math.ceil(per_frame / cols) > 65535 and cols < 32768:
        cols *= 2  # Rows and Columns are US: at most 65535 each
    rows = math.ceil(per_frame / cols)
    if rows > 65535:
        raise SystemExit("gen_dicom.py: frames too large; use --frames")
    return rows, cols


def pixel_chunks(length, fill):
    """Yield `length` bytes of pixel data in chunks of at most CHUNK bytes.

    "random" repeats one random MiB with a counter stamped into each chunk, so
    chunks differ and files differ, at disk speed rather than urandom speed.
    """
    block = os.urandom(CHUNK) if fill == "random" else bytes(CHUNK)
    n = 0
    left = length
    while left > 0:
        take = min(CHUNK, left)
        if fill == "random":
            chunk = struct.pack("<Q", n) + os.urandom(8) + block[16:take]
            yield chunk[:take]
        else:
            yield block[:take]
        n += 1
        left -= take


def build(args, study_uid, series_uid, sop_uid):
    ts = SYNTAXES[args.ts]
    frames = max(1, args.frames)
    rows, cols = geometry(args.size, frames)
    sop_class = MULTIFRAME_GRAYSCALE_BYTE_SC if frames > 1 else SECONDARY_CAPTURE

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HC_GEN_DICOM"

    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian = ts != ExplicitVRBigEndian
    ds.is_implicit_VR = ts == ImplicitVRLittleEndian
    if args.sequence_before_uids:
        # (0008,0006) sorts before SOP Instance UID (0008,0018): a probe that
        # looks for the UIDs must walk undefined-length items to find them.
        inner = Dataset()
        inner.CodeValue = "en"
        inner.CodingSchemeDesignator = "RFC5646"
        inner.CodeMeaning = "English"
        inner.is_undefined_length_sequence_item = True
        item = Dataset()
        item.CodeValue = "eng"
        item.CodingSchemeDesignator = "ISO639_2"
        item.CodeMeaning = "English"
        item.is_undefined_length_sequence_item = True
        item.ConceptCodeSequence = Sequence([inner])
        item["ConceptCodeSequence"].is_undefined_length = True
        ds.LanguageCodeSequence = Sequence([item])
        ds["LanguageCodeSequence"].is_undefined_length = True
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = args.study_date
    ds.StudyTime = args.study_time
    ds.Modality = args.modality
    if args.study_description is not None:
        ds.StudyDescription = args.study_description
    if args.series_description is not None:
        ds.SeriesDescription = args.series_description
    if args.accession_number is not None:
        ds.AccessionNumber = args.accession_number
    ds.ConversionType = "WSD"
    ds.PatientName = args.patient_name
    ds.PatientID = args.patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = args.series_number
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    length = rows * cols * frames
    return ds, length + (length & 1)


def write(args, path, ds, length):
    ts = ds.file_meta.TransferSyntaxUID
    if args.no_meta:
        del ds.file_meta
        ds.is_little_endian, ds.is_implicit_VR = True, True
        ts = ImplicitVRLittleEndian
    if ts == DeflatedExplicitVRLittleEndian:
        # The whole data set is one deflate stream: build it in memory.
        ds.PixelData = b"".join(pixel_chunks(length, args.fill))
        ds["PixelData"].VR = "OB"
        ds.save_as(path, write_like_original=args.no_preamble or args.no_meta)
        return
    if args.no_preamble or args.no_meta:
        ds.preamble = None
        ds.save_as(path, write_like_original=True)
    else:
        ds.save_as(path, write_like_original=False)
    # (7FE0,0010) OB: the last element, appended raw and streamed.
    if ts == ImplicitVRLittleEndian:
        head = struct.pack("<HHI", 0x7FE0, 0x0010, length)
    elif ts == ExplicitVRBigEndian:
        head = struct.pack(">HH2sHI", 0x7FE0, 0x0010, b"OB", 0, length)
    else:
        head = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, length)
    with open(path, "ab") as f:
        f.write(head)
        for chunk in pixel_chunks(length, args.fill):
            f.write(chunk)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("count", nargs="?", type=int, default=1, help="number of files (default 1)")
    p.add_argument("-n", "--count", dest="count_opt", type=int, help="same as the positional count")
    p.add_argument("-o", "--out", default=".", help="output directory (created)")
    p.add_argument("--study", help="StudyInstanceUID for all files (default: one fresh study)")
    p.add_argument("--series", help="SeriesInstanceUID for all files (default: one fresh series)")
    p.add_argument("--sop", help="SOPInstanceUID (only with a count of 1), e.g. to make a conflict")
    p.add_argument("--size", type=int, default=4096, help="pixel data bytes per file (default 4096)")
    p.add_argument("--ts", choices=sorted(SYNTAXES), default="explicit",
                   help="transfer syntax: explicit LE (default), implicit LE, explicit big endian, deflated")
    p.add_argument("--no-preamble", action="store_true",
                   help="no 128-byte preamble nor DICM prefix (meta group still written)")
    p.add_argument("--no-meta", action="store_true",
                   help="a bare implicit-LE data set: no preamble, no meta group")
    p.add_argument("--sequence-before-uids", action="store_true",
                   help="an undefined-length sequence (0008,0006) before the UIDs")
    p.add_argument("--frames", type=int, default=1, help="number of frames (multi-frame when > 1)")
    p.add_argument("--fill", choices=["random", "zero"], default="random", help="pixel content")
    p.add_argument("--prefix", default="gen", help="file name prefix")
    p.add_argument("--patient-id", default="HC-TEST")
    p.add_argument("--patient-name", default="Test^Healthcare")
    p.add_argument("--study-date", default="20240101", help="StudyDate, YYYYMMDD")
    p.add_argument("--study-time", default="120000", help="StudyTime, HHMMSS")
    p.add_argument("--modality", default="OT", help="Modality (default OT)")
    p.add_argument("--study-description", help="StudyDescription (default: none)")
    p.add_argument("--series-description", help="SeriesDescription (default: none)")
    p.add_argument("--accession-number", help="AccessionNumber (default: none)")
    p.add_argument("--series-number", type=int, default=1, help="SeriesNumber (default 1)")
    args = p.parse_args()
    count = args.count_opt if args.count_opt is not None else args.count
    if args.sop and count != 1:
        p.error("--sop needs a count of 1")
    if args.size >= 0xFFFFFFFE - 65536:
        p.error("--size must stay below 4 GiB (a 32-bit element length)")
    if args.size < 0 or args.frames < 1:
        p.error("--size must be >= 0 and --frames >= 1")

    os.makedirs(args.out, exist_ok=True)
    study = args.study or generate_uid()
    series = args.series or generate_uid()
    for i in range(count):
        sop = args.sop or generate_uid()
        ds, length = build(args, study, series, sop)
        ds.InstanceNumber = i + 1
        path = os.path.abspath(os.path.join(args.out, "%s-%s.dcm" % (args.prefix, sop)))
        write(args, path, ds, length)
        sys.stdout.write(json.dumps({
            "path": path, "sop_instance_uid": sop, "study_uid": study,
            "series_uid": series, "sop_class_uid": str(ds.SOPClassUID),
            "transfer_syntax": "1.2.840.10008.1.2" if args.no_meta else str(ds.file_meta.TransferSyntaxUID),
            "size": os.path.getsize(path)}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
