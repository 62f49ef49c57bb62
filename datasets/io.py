"""Reading and writing single-channel X-ray images: 16-bit PNG, TIFF and DICOM.

Every reader returns a float64 array in [0, 1] in *display space* (higher = brighter), or raises
`BadImageError` naming the file and the fix. DICOM normalisation (../shared/reference/simulation.md
§5.3): pixel data masked to BitsStored by pydicom, modality LUT (RescaleSlope/Intercept), VOI LUT
or window (else a robust 0.5-99.5 percentile window), then MONOCHROME1 inverted exactly once
(pydicom's `apply_presentation_lut` does not invert MONOCHROME1 when no PresentationLUTShape is set).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom")


class BadImageError(ValueError):
    """An input image that cannot be used; the message names the file and the problem."""


def write_png16(path: Path, img: np.ndarray, bits: int = 16) -> None:
    """Write a [0, 1] float image as 16-bit PNG (or an integer label image with bits=8)."""
    path = Path(path)
    if bits == 8:
        Image.fromarray(np.asarray(img, np.uint8), mode="L").save(path)
        return
    arr = np.round(np.clip(img, 0.0, 1.0) * 65535.0).astype(np.uint16)
    Image.fromarray(arr).save(path)


def _check_plane(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise BadImageError(f"{path}: colour image with shape {arr.shape}; X-ray images must be single-channel "
                            "(convert to greyscale first)")
    if arr.ndim != 2:
        raise BadImageError(f"{path}: expected a 2-D image, got shape {arr.shape} (multi-frame or volume files "
                            "are not supported; export one frame)")
    if arr.size == 0:
        raise BadImageError(f"{path}: empty image")
    if not np.isfinite(arr).all():
        raise BadImageError(f"{path}: contains NaN or Inf pixels")
    if arr.min() == arr.max():
        raise BadImageError(f"{path}: constant image (every pixel is {arr.flat[0]}); remove it or fix its export")
    return arr


def _scale_integer(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return arr.astype(np.float64)
        raise BadImageError(f"{path}: float image with values in [{lo:g}, {hi:g}]; expected [0, 1]")
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return (arr.astype(np.float64) - info.min) / (info.max - info.min)
    raise BadImageError(f"{path}: unsupported pixel type {arr.dtype}")


def read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA", "P", "CMYK", "LA"):
                raise BadImageError(f"{path}: colour PNG (mode {im.mode}); save it as greyscale (L or I;16)")
            arr = np.array(im)
    except BadImageError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise BadImageError(f"{path}: cannot decode image ({exc})") from exc
    if arr.dtype == np.int32:  # mode "I" from some 16-bit PNG writers
        arr = arr.astype(np.uint16) if arr.min() >= 0 and arr.max() <= 65535 else arr
    return _scale_integer(_check_plane(arr, path), path)


def read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as exc:
        raise BadImageError(f"{path}: cannot decode TIFF ({exc})") from exc
    return _scale_integer(_check_plane(np.squeeze(arr), path), path)


def read_dicom(path: Path) -> np.ndarray:
    """Read a DICOM radiograph into display space [0, 1] (see module docstring)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise BadImageError(f"{path}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        meta = getattr(ds, "file_meta", None)
        sops = [ds.get("SOPClassUID"), meta.get("MediaStorageSOPClassUID") if meta is not None else None]
        if "Rows" in ds or any(sop is not None and "Image" in getattr(sop, "name", "") for sop in sops):
            raise BadImageError(f"{path}: DICOM image without its pixel data ({path.stat().st_size} bytes: a header "
                                "only, cut short before its image or exported without it); copy or export the file "
                                "again with its pixel data")
        raise BadImageError(f"{path}: DICOM file has no pixel data (e.g. a structured report or presentation state)")
    syntax = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) is not None else None
    if syntax is not None and not syntax.is_compressed and {"Rows", "Columns", "BitsAllocated"} <= set(ds.dir()):
        want = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1) * \
            int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        if len(ds.PixelData) < want:
            raise BadImageError(f"{path}: DICOM file is cut short: its pixel data holds {len(ds.PixelData)} of "
                                f"{want} bytes; copy the file again")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise BadImageError(f"{path}: cannot decode DICOM pixel data, transfer syntax "
                            f"{ds.file_meta.get('TransferSyntaxUID', '?')} ({exc}); for JPEG-2000 install "
                            "'pylibjpeg pylibjpeg-openjpeg'") from exc
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise BadImageError(f"{path}: DICOM with {ds.SamplesPerPixel} samples per pixel; expected greyscale")
    _check_plane(np.asarray(arr), path)
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds
                                           and float(np.atleast_1d(ds.WindowWidth)[0]) > 1)
    if has_voi:
        values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        lo, hi = _voi_output_range(ds, values)
    else:
        lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        raise BadImageError(f"{path}: constant image (no usable window)")
    out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    shape = str(ds.get("PresentationLUTShape", "")).upper()
    if shape == "INVERSE" or (not shape and ds.PhotometricInterpretation == "MONOCHROME1"):
        out = 1.0 - out  # invert exactly once
    return out


def _voi_output_range(ds, values: np.ndarray) -> tuple[float, float]:
    """Output range of the VOI stage: [y_min, y_max] of a window, or the LUT's value range."""
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return 0.0, float(2**bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def read_image(path: Path) -> np.ndarray:
    """Read any supported image into a float64 (H, W) display-space array in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: no such file (check the manifest or the folder layout)")
    suffix = path.suffix.lower()
    if suffix == ".png":
        return read_png(path)
    if suffix in (".tif", ".tiff"):
        return read_tiff(path)
    if suffix in (".dcm", ".dicom", ""):
        return read_dicom(path)
    raise BadImageError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")


def write_dicom_dx(path: Path, png_path: Path, row: dict, bits_stored: int = 12) -> None:
    """Write a generated image as a DX For Presentation file (MONOCHROME2, 12-bit, bone bright).

    Args:
        path: Destination .dcm path.
        png_path: The 16-bit PNG to convert.
        row: Manifest row (id, subject, view, domain, kvp, dose).
        bits_stored: Stored bits (the display range is quantised to this depth).
    """
    import datetime

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    img = read_png(Path(png_path))
    arr = np.round(img * (2**bits_stored - 1)).astype(np.uint16)
    dx_sop = "1.2.840.10008.5.1.4.1.1.1.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dx_sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    now = datetime.datetime(2025, 1, 1)
    ds.SOPClassUID, ds.SOPInstanceUID = dx_sop, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "SKULL^SIM", row["subject"], "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "xray-translation-bench skull-sim"
    ds.Modality, ds.PresentationIntentType = "DX", "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", -1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter, ds.WindowWidth = 2 ** (bits_stored - 1), 2**bits_stored
    ds.BodyPartExamined, ds.ImageLaterality = "SKULL", "U"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "89546000", "SCT", "Skull"
    ds.AnatomicRegionSequence = [region]
    ds.AcquisitionContextSequence = []
    ds.ImagerPixelSpacing = [340.0 / arr.shape[0], 340.0 / arr.shape[1]]
    ds.DetectorType, ds.PositionerType, ds.ViewPosition = "SCINTILLATOR", "NONE", "PA"
    ds.KVP = row["kvp"]
    ds.SeriesDescription = f"{row['domain']} ({row['dose']} dose), view {row['view']}"
    ds.set_pixel_data(arr, "MONOCHROME2", bits_stored, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
