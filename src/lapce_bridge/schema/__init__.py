"""One definition of every method's params and result (see `schema.methods`)."""
