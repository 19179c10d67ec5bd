"""`model.stablehlo`: a package's function as serialized StableHLO (`jax.export`).

    data, facts = serialize(inference)          # bytes, and what metadata.json records

The function is exported for the platforms `cpu` and `cuda` with a symbolic batch (and a
symbolic number of views for a study model). Loading it needs only jax (`jax.export.deserialize`),
in any jax release whose calling-convention range holds the artifact's version: jax keeps
loading artifacts for at least six months after the release that wrote them
(https://docs.jax.dev/en/latest/export/export.html#compatibility-guarantees).
"""

import datetime
from typing import Any

import jax
import jaxlib

from murajax.export.function import Inference

PLATFORMS = ("cpu", "cuda")
COMPATIBILITY_DAYS = 180  # jax's backward-compatibility promise for serialized artifacts


def export(inference: Inference) -> jax.export.Exported:
    """The `jax.export.Exported` of `inference.fn` for `PLATFORMS`."""
    return jax.export.export(jax.jit(inference.fn), platforms=PLATFORMS)(*inference.input_specs())


def serialize(inference: Inference, today: datetime.date | None = None) -> tuple[bytes, dict]:
    """The serialized artifact and its facts: the calling-convention version, the platforms,
    the jax and jaxlib that wrote it and the date until which newer jax releases promise to
    load it."""
    exported = export(inference)
    today = today or datetime.date.today()
    facts: dict[str, Any] = {
        "calling_convention_version": exported.calling_convention_version,
        "platforms": list(exported.platforms),
        "written_by": {"jax": jax.__version__, "jaxlib": jaxlib.__version__},
        "loads_in_jax_released_until": (
            today + datetime.timedelta(days=COMPATIBILITY_DAYS)
        ).isoformat(),
    }
    return bytes(exported.serialize()), facts
