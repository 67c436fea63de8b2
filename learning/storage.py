"""Where model artifacts are stored: a Django FileSystemStorage rooted at ``LEARNING_ARTIFACT_ROOT``.

The project's default storage has no ``MEDIA_ROOT`` (it would write into the process's working
directory), so artifacts get their own root. The location is read from the setting on every use, so tests
and operators can move it without re-importing the models.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.files.storage import FileSystemStorage


class ArtifactStorage(FileSystemStorage):
    @property
    def base_location(self):
        return settings.LEARNING_ARTIFACT_ROOT

    @property
    def location(self):
        return os.path.abspath(self.base_location)


_STORAGE = ArtifactStorage()


def artifact_storage() -> ArtifactStorage:
    return _STORAGE
