"""Toy models and data: stand-ins with the real shapes that run offline in seconds, their scores meaningless.

A public, registered part of the library (as mteb ships ``mocks`` and lm-evaluation-harness a ``dummy`` model):
tiny random-weight checkpoints of the five vision families (:mod:`~freeret.toy.models`, ``model.source=tiny``,
``model=tiny_*``), the bundled-image smoke set (:mod:`~freeret.toy.smoke`, ``dataset.kind=smoke``,
``dataset=smoke_mm``), the miniature MMEB (:mod:`~freeret.toy.mmeb_fixture`, ``dataset.source=fixture``, what
``mode=fast`` selects) and the reference chat rendering they are checked against (:mod:`~freeret.toy.chat`).

The library reaches them only through its registries (``freeret.backbone.spec.MODEL_SOURCES``,
``freeret.data.datasets.DATASET_KINDS``, ``freeret.data.mmeb.MMEB_SOURCES``), as it reaches any other source or kind.
"""
