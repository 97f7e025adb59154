"""retailCRM API v5: the client that pushes stock and prices, and its error classification."""
