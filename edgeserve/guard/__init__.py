"""Guards on what reaches a model: the input contract, and (later) drift monitoring and the audit log."""
