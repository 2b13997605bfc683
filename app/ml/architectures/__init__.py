"""ARCHITECTURES: every model `arch` can name. One module per family builds it (fresh head, stage map,
preprocessing); this list registers its entries, in the order the API documents them.

Adding an architecture: a module with a `build(arch, num_classes, pretrained) -> BuiltModel` and its entries,
then one line here. Nothing at import needs torch (the API contract lists these names).
"""

from __future__ import annotations

from app.ml.architectures import convnets, efficientnet_lite0, resnet, timm_models, vit
from app.ml.architectures.base import Architecture, ArchitectureError
from app.ml.registry import Registry

ARCHITECTURES: Registry[Architecture] = Registry(
    "architecture",
    ArchitectureError,
    [*resnet.ENTRIES, *convnets.ENTRIES, *vit.ENTRIES, *efficientnet_lite0.ENTRIES, *timm_models.ENTRIES],
)
DEFAULT_ARCHITECTURE = efficientnet_lite0.ENTRIES[0].name  # ships its weights: works offline

__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "Architecture", "ArchitectureError"]
