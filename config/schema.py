"""OpenAPI schema (drf-spectacular): the schema class every API view uses, and hooks."""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter

from projects.query import READS, known_query_params


class PlatformAutoSchema(AutoSchema):
    """Lists exactly the query parameters each view reads (`projects.query`), so the
    schema and the 400 for an unknown parameter cannot disagree: a view's own
    `extra_query_params` are added, and a filter backend's parameter the view does not
    take (spectacular lists them per backend) is left out."""

    def get_override_parameters(self):
        parameters = list(super().get_override_parameters())
        if self.method.upper() not in READS:
            return parameters
        declared = {getattr(p, "name", None) for p in parameters}
        for name, description in getattr(self.view, "extra_query_params", {}).items():
            if name not in declared:
                parameters.append(OpenApiParameter(name, str, description=description))
        return parameters

    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation and "parameters" in operation:
            known = known_query_params(self.view, self.method)
            operation["parameters"] = [
                p for p in operation["parameters"] if p["in"] != "query" or p["name"] in known
            ]
        return operation


def exclude_dicomweb(endpoints):
    """Leave the DICOMweb proxy out of the REST schema: DICOMweb (PS3.18) is its contract."""
    return [e for e in endpoints if not e[0].startswith("/dicom-web/")]
