"""Offline optimisation: ``inferq models optimize`` turns a version into an int8, half-precision
or AOTInductor version, validated against its source before it is written."""
