"""Loopback stand-ins for providers' APIs, speaking their wire formats, for tests and the local demo."""
