"""The ingress: serves every registered service's methods as if it were that service."""

from .attach import IngressServicer
from .reflection import DynamicReflection
from .router import IngressRouter

__all__ = ["DynamicReflection", "IngressRouter", "IngressServicer"]
