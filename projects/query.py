"""Query strings the API understands, and a 400 naming anything else.

DRF and django-filter ignore a query parameter they do not know, and DRF's ordering
filter drops a term it does not know: `?stauts=failed` or `?ordering=scroe` answered 200
with the whole list in the default order, which a worklist or a script cannot tell from
the answer it asked for. Here every API view (through `ProjectScopedMixin`, or directly)
checks its query string once authentication and permissions have passed:

- a list view knows its filter fields (a range filter's `_after`/`_before` names
  included), `ordering` where it orders, `search` where it searches, and its paginator's
  page parameters;
- a view that reads `request.query_params` itself declares the names in
  `extra_query_params`, or a `query_serializer` that validates them;
- every view knows DRF's `format` override;
- a write (POST, PUT, PATCH, DELETE) takes its input in the body: the format override is
  the only query parameter it knows.

Anything else gets a 400 naming the parameter and listing what the endpoint takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import serializers
from rest_framework.filters import OrderingFilter, SearchFilter
from rest_framework.settings import api_settings


def _filter_param_names(filterset_class) -> set[str]:
    names = set()
    for name, declared in filterset_class.base_filters.items():
        suffixes = getattr(declared.field.widget, "suffixes", None)
        if suffixes:  # range filters: ?<name>_after=&<name>_before=
            names |= {f"{name}_{suffix}" if suffix else name for suffix in suffixes}
        else:
            names.add(name)
    return names


def _filterset_fields_names(fields: Iterable[str] | Mapping[str, Iterable[str]]) -> set[str]:
    if isinstance(fields, Mapping):  # {field: [lookups]}: exact is `field`, others field__lookup
        return {
            name if lookup == "exact" else f"{name}__{lookup}"
            for name, lookups in fields.items()
            for lookup in lookups
        }
    return set(fields)


READS = frozenset({"GET", "HEAD"})


def known_query_params(view, method: str = "GET") -> set[str]:
    """Every query parameter `view` reads when asked with `method`."""
    names = set()
    if api_settings.URL_FORMAT_OVERRIDE:
        names.add(api_settings.URL_FORMAT_OVERRIDE)
    if method.upper() not in READS:
        return names
    names |= set(getattr(view, "extra_query_params", ()))
    query_serializer = getattr(view, "query_serializer", None)
    if query_serializer is not None:
        names |= set(query_serializer().fields)
    if not hasattr(view, "list"):  # filters, ordering and pages act on list views only
        return names
    for backend in getattr(view, "filter_backends", ()):
        if issubclass(backend, DjangoFilterBackend):
            filterset_class = getattr(view, "filterset_class", None)
            if filterset_class is not None:
                names |= _filter_param_names(filterset_class)
            else:
                names |= _filterset_fields_names(getattr(view, "filterset_fields", None) or ())
        elif issubclass(backend, OrderingFilter):
            names.add(backend.ordering_param)
        elif issubclass(backend, SearchFilter) and getattr(view, "search_fields", None):
            names.add(backend.search_param)
    paginator = getattr(view, "paginator", None)
    if paginator is not None:
        for attribute in (
            "page_query_param",
            "page_size_query_param",
            "limit_query_param",
            "offset_query_param",
            "cursor_query_param",
        ):
            name = getattr(paginator, attribute, None)
            if name:
                names.add(name)
    return names


class StrictQueryMixin:
    """For API views: a query parameter the view does not read gets a 400 naming it."""

    # Parameters the view reads from request.query_params itself, e.g. {"study": "..."}.
    extra_query_params: Mapping[str, str] = {}
    # Or a serializer for the query (its fields are the names): a read's query is
    # validated with it here (400 on a bad value) and handed to the view as `self.query`.
    query_serializer: type[serializers.Serializer] | None = None
    query: dict = {}

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authentication and permissions first
        if request.method == "OPTIONS":
            return
        known = known_query_params(self, request.method)
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            takes = sorted(known) or "no query parameters"
            raise serializers.ValidationError(
                {name: f"Unknown query parameter; this endpoint takes {takes}." for name in unknown}
            )
        if self.query_serializer is not None and request.method in READS:
            query = self.query_serializer(data=request.query_params)
            query.is_valid(raise_exception=True)
            self.query = query.validated_data


class StrictOrderingFilter(OrderingFilter):
    """`?ordering=` with a term the list cannot order by gets a 400 (DRF drops the term)."""

    def remove_invalid_fields(self, queryset, fields, view, request):
        valid = {
            name for name, _label in self.get_valid_fields(queryset, view, {"request": request})
        }
        bad = [term for term in fields if term.lstrip("-") not in valid]
        if bad:
            raise serializers.ValidationError(
                {
                    self.ordering_param: (
                        f"Cannot order by {bad}; this list orders by {sorted(valid)} "
                        "(a leading '-' for descending)."
                    )
                }
            )
        return super().remove_invalid_fields(queryset, fields, view, request)
