"""dho-gateway agent: device drivers, encrypted buffer and uplink for a home DHO gateway."""

__version__ = "0.1.0"
