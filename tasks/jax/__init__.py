"""JAX twins of the tasks: the same weights, data and loss as the torch modules."""
