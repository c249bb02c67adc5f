"""The frame fast lane: servable WADO-RS frame requests answered ahead of most middleware.

A viewer fetches every frame of a series, hundreds of requests a minute, each about 2 ms
in Orthanc. Django's middleware stack and URL resolver add ~0.4 ms to each, work these
requests do not need: they carry a token (no session, no CSRF, no messages) and one route.
`FrameFastLane` sits right after `SecurityMiddleware` (so HTTPS redirects and security
headers still apply), matches the path with the frames route's own pattern
(`imaging.proxy_urls`), and asks `RetrieveInstanceFrames.direct_response`; the answer gets
the response headers the rest of the stack would add (Content-Length, X-Frame-Options).

Everything else goes down the stack as usual: requests without an `Authorization` header
(the browser's session cookie), and every request `answer_directly` declines (errors,
other Accept headers, transfer syntaxes not indexed yet), so statuses and messages keep
one source. Django's request signals (database connection upkeep) still fire: the lane
runs inside Django's handler.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware

from imaging import proxy
from imaging.proxy_urls import FRAMES_ROUTE_NAME, urlpatterns


class FrameFastLane:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response
        (route,) = (p for p in urlpatterns if p.name == FRAMES_ROUTE_NAME)
        self.pattern = route.pattern  # the URL map's own converters (UIDs, frame lists)
        # What the skipped middleware adds to such an answer, innermost first.
        self.finishers = [
            XFrameOptionsMiddleware(get_response).process_response,
            CommonMiddleware(get_response).process_response,
        ]

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.method == "GET" and "HTTP_AUTHORIZATION" in request.META:
            match = self.pattern.match(request.path_info[1:])
            if match is not None and not match[0]:
                response = proxy.RetrieveInstanceFrames.direct_response(request, **match[2])
                if response is not None:
                    for finish in self.finishers:
                        response = finish(request, response)
                    return response
        return self.get_response(request)
