"""Training configurations (``get_config()`` in each file; shared values in ``base``)."""
