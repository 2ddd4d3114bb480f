"""pytorch-grad-cam (the `grad-cam` package) as a reference, without torchvision.

grad-cam imports three torchvision names when its package loads (image preprocessing
helpers, a detection target's box IoU, a resize in its SESS wrapper); its CAM algorithms
(BaseCAM, GradCAM, HiResCAM, XGradCAM, LayerCAM) never call them. No torchvision is
installable beside torch 2.13.0+cpu (PyPI's 0.28.0 is a CUDA build that fails to import
and then breaks transformers), so `import_grad_cam` imports the package with those names
stubbed, and removes the stubs from sys.modules again, so that nothing else in the test
process (transformers' image processors above all) ever sees a torchvision.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


def _stub_torchvision() -> dict[str, types.ModuleType]:
    """Placeholder modules for the names grad-cam imports at package load."""
    torchvision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    for name in ("Compose", "Normalize", "ToTensor"):
        setattr(transforms, name, None)
    functional.resize = None  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    torchvision.transforms = transforms  # type: ignore[attr-defined]
    torchvision.ops = ops  # type: ignore[attr-defined]
    return {"torchvision": torchvision, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional, "torchvision.ops": ops}


def import_grad_cam() -> Any:
    """The pytorch_grad_cam package (GradCAM, HiResCAM, XGradCAM, LayerCAM, ...), imported
    with torchvision stubbed only while it loads (a real torchvision is used if present)."""
    if "pytorch_grad_cam" in sys.modules:
        return sys.modules["pytorch_grad_cam"]
    import transformers  # noqa: F401 - transformers settles its own torchvision probe first

    stubs = {} if importlib.util.find_spec("torchvision") else _stub_torchvision()
    added = [name for name in stubs if name not in sys.modules]
    sys.modules.update({name: stubs[name] for name in added})
    try:
        module = importlib.import_module("pytorch_grad_cam")
        importlib.import_module("pytorch_grad_cam.utils.model_targets")
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return module
