"""Daily Papers Digest: turn saved Hugging Face Daily Papers pages into per-subscriber digests."""

__version__ = "0.1.0"
