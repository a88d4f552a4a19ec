"""HTTP endpoints (docs/api.md), one router per resource, each under its OpenAPI tag."""

from lsmseg.service.routes import operations, segment, vocab
from lsmseg.service.routes.operations import STATIC_DIR

ROUTERS = (segment.router, vocab.router, operations.router)
TAGS = [
    {"name": "segmentation", "description": "Label maps of images, by class list or vocabulary"},
    {"name": "vocabularies", "description": "Named or anonymous class lists, shared by workers via Redis"},
    {"name": "operations", "description": "Liveness, readiness and metrics; open even when a key is set"},
]

__all__ = ["ROUTERS", "STATIC_DIR", "TAGS"]
