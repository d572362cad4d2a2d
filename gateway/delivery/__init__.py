"""The way out: every outgoing message is a delivery row sent through its channel's lane."""
