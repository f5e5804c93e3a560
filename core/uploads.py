"""Uploaded files kept for a background job, under MEDIA_ROOT."""

from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile


def media_path(relative: str) -> Path:
    return Path(settings.MEDIA_ROOT) / relative


def upload_store(*, file: UploadedFile, relative: str) -> Path:
    """Write an upload to MEDIA_ROOT/`relative` in chunks (never whole in memory); return
    where it is."""
    path = media_path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for block in file.chunks():
            out.write(block)
    return path
