"""Constants of the geometry that configuration needs too, kept free of torch so that
``hyperbolic.config`` (and the flags built from it) can import them without the tensor stack."""

# Cone aperture constant K of the entailment cones, psi(x) = arcsin(K (1 - c|x|^2) / (sqrt(c)|x|)):
# the value Ganea, Bécigneul and Hofmann (2018) use with this Poincaré formula
# (``hyperbolic.hierarchy.cones``). The one place it is written.
DEFAULT_K = 0.1
