"""Example models built in the project with nothing downloaded: their architectures (``nets``) and
the code that trains or initialises them and writes them into a model repository (``build``)."""
