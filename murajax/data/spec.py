"""`DatasetSpec`: a dataset resolved once, from its own TFDS features, like a model's `ModelSpec`.

What the rest of murajax needs to know of a dataset (the loss, metrics, evaluation, report,
predict and plots take the spec instead of importing MURA's constants):

- its label names, in class-index order (and so the number of classes; two classes are
  scored as today's binary MURA metrics, more as multi-class ones);
- its grouping feature (MURA's `body_part`, `image_folder`'s `group`, or none) and the
  group names;
- whether its records carry study and patient keys (a dataset without studies has one image
  per study, one without patients one study per patient);
- the reference scores to plot beside ours, where the dataset's builder has any (the MURA
  paper's kappas for `mura` and `mura_synthetic`: `REFERENCE_SCORES` on the builder class).

`resolve(data_config)` opens the builder's info (no data is read); a training run writes the
spec into its workdir (`dataset.json`), from which `evaluate` and `predict` read it back, so a
trained model is scored and used without the dataset at hand.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from murajax.config import DataConfig
from murajax.data import sources as sources_lib

SPEC_FILE = "dataset.json"
"""The workdir file that holds a run's `DatasetSpec` (`save` / `load`)."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset's labels, groups, keys and reference scores (see the module docstring)."""

    name: str  # the TFDS name, as in `data.dataset`
    label_names: tuple[str, ...]  # class index -> name
    group_feature: str | None = None  # "body_part" (MURA), "group" (image_folder), or None
    group_names: tuple[str, ...] = ()  # group index -> name; () without groups
    has_studies: bool = True  # records carry `study_id` (else one image per study)
    has_patients: bool = True  # records carry `patient_id` (else one study per patient)
    reference_kappa: Mapping[str, float] = dataclasses.field(default_factory=dict)
    reference_auroc: float | None = None  # overall, where the reference has one
    reference_label: str = ""  # what the reference scores are, for plot legends and tables
    reference_source: str = ""  # where they are published

    @property
    def num_classes(self) -> int:
        """The number of labels, so the size of a model's logits."""
        return len(self.label_names)

    @property
    def binary(self) -> bool:
        """Two classes: scored as MURA is (kappa, AUROC, sensitivity of class 1, ...)."""
        return self.num_classes == 2

    @property
    def group_column(self) -> str | None:
        """The column of the grouping feature in predictions.csv (`body_part` for MURA)."""
        return self.group_feature

    @property
    def by_group_key(self) -> str | None:
        """The key of the per-group scores in metrics.json (`by_body_part` for MURA)."""
        return f"by_{self.group_feature}" if self.group_feature else None

    def group_name(self, index: int) -> str:
        """The name of group `index` (its number where the dataset has no such group)."""
        return self.group_names[index] if 0 <= index < len(self.group_names) else str(index)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values (what `dataset.json` holds)."""
        values = dataclasses.asdict(self)
        values["reference_kappa"] = dict(self.reference_kappa)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DatasetSpec":
        """Rebuilds a spec from `to_dict`'s output."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in fields}
        for key in ("label_names", "group_names"):
            kept[key] = tuple(kept.get(key, ()))
        return cls(**kept)


def _class_names(features: Mapping[str, Any], name: str) -> tuple[str, ...]:
    return tuple(str(n) for n in features[name].names)


def from_features(
    name: str, features: Mapping[str, Any], references: Mapping[str, Any] | None = None
) -> DatasetSpec:
    """The spec of dataset `name` from its TFDS `features` (a `FeaturesDict`: `label` a
    ClassLabel; optionally a grouping ClassLabel, `study_id`, `patient_id`) and its builder's
    `REFERENCE_SCORES` (`{"kappa": {group or "overall": value}, "auroc": value, "label": text}`).
    """
    if "label" not in features or not hasattr(features["label"], "names"):
        raise sources_lib.DataError(
            f"dataset {name!r} has no ClassLabel feature 'label': murajax trains classifiers on"
            " datasets whose examples have an 'image' and a 'label' with class names"
        )
    group = sources_lib.group_feature(features)
    references = dict(references or {})
    return DatasetSpec(
        name=name,
        label_names=_class_names(features, "label"),
        group_feature=group,
        group_names=_class_names(features, group) if group else (),
        has_studies="study_id" in features,
        has_patients="patient_id" in features,
        reference_kappa=dict(references.get("kappa", {})),
        reference_auroc=references.get("auroc"),
        reference_label=str(references.get("label", "")),
        reference_source=str(references.get("source", "")),
    )


def resolve(data_config: DataConfig) -> DatasetSpec:
    """The `DatasetSpec` of `data_config.dataset`, from its builder's features (the dataset
    need not be prepared: nothing is read but its info). Raises `DataError` for an unknown
    dataset, or one without a ClassLabel `label`."""
    builder = sources_lib.builder(data_config)
    references = getattr(type(builder), "REFERENCE_SCORES", None)
    return from_features(data_config.dataset, builder.info.features, references)


def save(spec: DatasetSpec, workdir: str) -> None:
    """Writes `spec` as the workdir's `dataset.json` (atomically)."""
    path = os.path.join(workdir, SPEC_FILE)
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(spec.to_dict(), f, indent=2)
        f.write("\n")
    os.replace(partial, path)


def load(workdir: str) -> DatasetSpec | None:
    """The spec a run saved in `workdir`, or None where it has none (a workdir from before
    `dataset.json`: its dataset was MURA-shaped, see `for_workdir`)."""
    path = os.path.join(workdir, SPEC_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return DatasetSpec.from_dict(json.load(f))


def check_unchanged(spec: DatasetSpec, workdir: str) -> None:
    """Raises a one-line `DataError` if `workdir` was trained on a dataset whose labels or
    groups differ from `spec`'s (its `dataset.json`): its model's outputs mean other classes."""
    saved = load(workdir)
    if saved is None:
        return
    for field in ("label_names", "group_feature", "group_names"):
        before, now = getattr(saved, field), getattr(spec, field)
        if before != now:
            raise sources_lib.DataError(
                f"dataset {spec.name!r} is not the one --workdir={workdir} was trained on: its"
                f" {field} are {list(now) if isinstance(now, tuple) else now!r}, the workdir's"
                f" {os.path.join(workdir, SPEC_FILE)} says"
                f" {list(before) if isinstance(before, tuple) else before!r}; train it in a"
                " new workdir"
            )


def for_workdir(workdir: str, data_config: DataConfig) -> DatasetSpec:
    """The spec of a trained workdir: its `dataset.json`, else (older workdirs) resolved from
    its config's dataset."""
    return load(workdir) or resolve(data_config)
