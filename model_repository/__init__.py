"""vlpserve."""
