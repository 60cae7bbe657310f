"""The Temporal client every Keel process uses: same address, namespace and data converter.

Payloads are pydantic JSON; with KEEL_CODEC_KEY_FILE set they are also sealed by `EncryptionCodec`, and
failure messages and stack traces are moved into (sealed) payloads too.
"""

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from keel.codec import EncryptionCodec
from keel.settings import Settings


def data_converter(settings: Settings) -> DataConverter:
    if settings.codec_key_file is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec.from_file(settings.codec_key_file),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def connect_temporal(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
    )
