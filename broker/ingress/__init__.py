"""The ingress: serves every registered service's methods as if it were that service."""

from .reflection import DynamicReflection
from .router import IngressRouter

__all__ = ["DynamicReflection", "IngressRouter"]
