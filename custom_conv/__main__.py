"""`python -m custom_conv`: what this installation is, for a bug report."""
from . import info

for key, value in info().items():
    print(f"{key + ':':<21}{value}")
