"""The backup store: named parts (``<app>/<backup id>/<part>``) written once, read back, deleted.

``DirectoryStore`` (the default, ``APP_BACKUP_DIR``) keeps them as private files (folders 0700,
files 0600, written under a temporary name and renamed into place, so a part is whole or absent).
``S3Store`` (``APP_BACKUP_S3_BUCKET``) keeps them in an S3-compatible bucket through boto3, an
optional dependency (requirements-s3.txt), imported only when configured.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from django.conf import settings

from supervisor_site import private_files

# Part keys are built by this package only; anything else is refused before touching a path.
KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class StoreError(Exception):
    """The store cannot hold or give back a part (worded for the operator)."""


def check_key(key: str) -> str:
    if not KEY_RE.match(key) or ".." in key.split("/"):
        raise StoreError(f"bad backup part name {key!r}")
    return key


class BackupStore(Protocol):
    label: str

    def writer(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    def reader(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> None: ...


class DirectoryStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.label = f"directory {self.root}"

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        path = self.path(key)
        try:
            private_files.private_dir(path.parent)
            handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=".part-", delete=False)  # noqa: SIM115
        except OSError as error:
            raise StoreError(f"cannot write {path}: {error.strerror}") from None
        try:
            with handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(handle.name)
            raise

    @contextlib.contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        try:
            handle = open(self.path(key), "rb")  # noqa: SIM115
        except OSError as error:
            raise StoreError(f"cannot read backup part {key}: {error.strerror}") from None
        with handle:
            yield handle

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)


class S3Store:
    """An S3-compatible bucket (AWS, MinIO, Ceph…): credentials from boto3's usual sources
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role). Parts are
    staged in a private temporary file on both ways, so a dump is uploaded whole or not at all."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str = ""):
        try:
            import boto3
        except ImportError:
            raise StoreError("APP_BACKUP_S3_BUCKET is set but boto3 is not installed (requirements-s3.txt)") from None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=endpoint_url or None)
        self.label = f"s3://{bucket}/{self.prefix}"

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        with tempfile.TemporaryFile() as staged:
            yield staged
            staged.seek(0)
            try:
                self.client.upload_fileobj(staged, self.bucket, self.object_key(key))
            except Exception as error:  # botocore's errors share no useful base
                raise StoreError(f"cannot upload {key} to {self.label}: {error}") from None

    @contextlib.contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        with tempfile.TemporaryFile() as staged:
            try:
                self.client.download_fileobj(self.bucket, self.object_key(key), staged)
            except Exception as error:
                raise StoreError(f"cannot download {key} from {self.label}: {error}") from None
            staged.seek(0)
            yield staged

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception:
            return False
        return True

    def delete_prefix(self, prefix: str) -> None:
        listed = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.object_key(prefix) + "/"
        )
        for page in listed:
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})


def configured() -> BackupStore:
    """The store the settings name: S3 when a bucket is configured, else the directory."""
    config = settings.APP_CONFIG
    if config.backup_s3_bucket:
        return S3Store(config.backup_s3_bucket, config.backup_s3_prefix, config.backup_s3_endpoint)
    return DirectoryStore(config.backup_dir)
