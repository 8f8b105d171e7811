"""Example models built in the project with nothing downloaded: their architectures (``nets``) and
the code that trains or initialises them and writes them into a model repository (``build``)."""

# Here, not in ``build``, so that the CLI can offer them as choices without importing torch.
EXAMPLE_NAMES: tuple[str, ...] = (
    "shapes",
    "resnet18",
    "resnet50",
    "null32",
    "null224",
    "detector",
    "segmenter",
    "textcls",
)
