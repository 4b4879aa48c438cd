"""The public img2img API: an aiohttp service in front of the Triton model."""
