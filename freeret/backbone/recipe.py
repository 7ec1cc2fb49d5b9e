"""A vision family's processor recipe as data: which classes build its processor and how its images nest.

``families.py`` gives each vision family one and ``processors.py`` builds processors from the recipe it is handed, so
neither imports the other; the classes are ``"module:Class"`` references, imported only when a processor is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from freeret.registry import resolve


@dataclass(frozen=True)
class ProcessorRecipe:
    """How to build a vision family's processor: processor class, image processor classes, how images nest.

    Classes are ``"module:Class"`` references, imported when a processor is built (``torchvision_image_processor``'s
    module imports torchvision, so it is imported only when chosen).
    """

    processor: str
    image_processor: str
    torchvision_image_processor: str
    real_processor_name: str
    nested_images: bool
    pixel_limits: bool = False

    @property
    def processor_class(self) -> type:
        """The processor class (a video-less subclass where the stock one wants a video processor)."""
        return resolve(self.processor)

    @property
    def image_processor_class(self) -> type:
        """The PIL image processor class."""
        return resolve(self.image_processor)

    def image_processor_for(self, backend: str) -> type:
        """The image processor class of ``backend`` ("pil" or "torchvision")."""
        return self.image_processor_class if backend == "pil" else resolve(self.torchvision_image_processor)
