"""Serves hosted apps under /apps/<name>/ in processes that host apps (placeholder)."""


class HostedAppMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)
