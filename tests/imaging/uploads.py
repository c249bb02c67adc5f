"""Helpers to upload test files through the API and to build archives."""

from __future__ import annotations

import io
import zipfile

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from pydicom.dataset import Dataset

from tests.support.dicom_files import to_bytes


def upload(client, project, files: dict[str, bytes]):
    """POST `files` (name -> bytes) as multipart `files` to the project's upload endpoint."""
    url = reverse("upload", kwargs={"project": project.slug})
    payload = [SimpleUploadedFile(name, data) for name, data in files.items()]
    return client.post(url, {"files": payload}, format="multipart")


def dicom_files(datasets: list[Dataset], prefix: str = "slice") -> dict[str, bytes]:
    return {f"{prefix}{i:03d}.dcm": to_bytes(ds) for i, ds in enumerate(datasets)}


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()
