"""skewless: production time-series forecasting where training and serving cannot drift apart."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("skewless")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
