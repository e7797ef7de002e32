"""An example Django shop that sends a webhook when an order is created."""
