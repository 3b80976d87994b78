"""JAX twins of the torch curvature methods: optax ``GradientTransformationExtraArgs`` with the
same names, hyperparameters and defaults (``registry.py``)."""
