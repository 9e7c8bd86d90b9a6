"""made-service: MADE density estimation as a library, a command line tool and a REST service."""

__version__ = "0.1.0"
